"""bench/accuracy.py --quick: the real `bertclf train` runs, rows in the documented JSON shape, rerun replaces rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from .conftest import DATASETS, REPO, subset


def run(tmp_path, tiny_model_dir, datasets: str, seeds: str, *flags: str) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick", "--datasets", datasets, "--seeds", seeds,
                           "--model", tiny_model_dir, "--output", str(tmp_path), *flags], check=True, capture_output=True, text=True)
    return {**json.loads((tmp_path / "accuracy.json").read_text()), "log": proc.stderr}


# TREC's variants but the distilled ones, whose teacher (bench/accuracy.py TEACHERS) a fresh clone does not hold
TREC_WITHOUT_TEACHER = ",".join(["defaults", "class-weight none", "refit class-weight balanced", "refit class-weight none",
                                 "refit class-weight none batch 16", "refit class-weight none lr 5e-5",
                                 "refit class-weight none layer-lr-decay 0.8", "refit class-weight none metric accuracy",
                                 "mpnet refit class-weight none"])


def test_quick_accuracy_bench_writes_rows_per_dataset_and_keeps_others(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from common import cpu_name

    rows = run(tmp_path, tiny_model_dir, "trec", "1,2", "--variants", TREC_WITHOUT_TEACHER)["rows"]
    assert [(r["dataset"], r["variant"], r["split"], r["metric"]) for r in rows] == [
        ("trec", "defaults", "test", "accuracy"), ("trec", "class-weight none", "test", "accuracy"),
        ("trec", "refit class-weight balanced", "test", "accuracy"), ("trec", "refit class-weight none", "test", "accuracy"),
        ("trec", "refit class-weight none batch 16", "test", "accuracy"), ("trec", "refit class-weight none lr 5e-5", "test", "accuracy"),
        ("trec", "refit class-weight none layer-lr-decay 0.8", "test", "accuracy"),
        ("trec", "refit class-weight none metric accuracy", "test", "accuracy"),
        ("trec", "mpnet refit class-weight none", "test", "accuracy")]
    row, unweighted, refit, _, batch16, _, layer_decay, by_accuracy, mpnet = rows
    assert mpnet["command"].count("--model") == 1 and "all-mpnet-base-v2" not in mpnet["command"]  # --model replaces the variant's
    assert mpnet["model"] == tiny_model_dir and "--refit --class-weight none" in mpnet["command"]
    assert "--class-weight none" in unweighted["command"] and "--class-weight" not in row["command"]
    assert "--refit --class-weight balanced" in refit["command"]
    assert "--batch-size 16" in batch16["command"] and "--layer-lr-decay 0.8" in layer_decay["command"]
    assert "--metric accuracy" in by_accuracy["command"]
    assert refit["train_rows"] == 200  # the held-out 40 rejoin training
    assert {"dataset", "split", "metric", "mean", "std", "seeds", "model", "command"} <= set(row)
    assert row["precision"] in {"fp32", "bf16"}  # what --precision auto chose here
    assert row["cpu"] == cpu_name() and cpu_name()  # the machine, so a rerun elsewhere is told apart
    assert row["seeds"] == [1, 2] and len(row["values"]) == 2 and 0 <= row["mean"] <= 1 and row["rows"] == 500
    assert row["train_rows"] == 160  # the 200-row sample less the seeded 20% dev split
    assert "bertclf train" in row["command"] and "--seed S" in row["command"] and "trec/test.csv" in row["command"]

    rows = run(tmp_path, tiny_model_dir, "goemotions", "1", "--variants", "all")["rows"]
    kinds = {(r["dataset"], r["variant"], r["metric"]) for r in rows}
    assert kinds == {("trec", "defaults", "accuracy"), ("trec", "class-weight none", "accuracy"),
                     ("trec", "refit class-weight balanced", "accuracy"), ("trec", "refit class-weight none", "accuracy"),
                     ("trec", "refit class-weight none batch 16", "accuracy"), ("trec", "refit class-weight none lr 5e-5", "accuracy"),
                     ("trec", "refit class-weight none layer-lr-decay 0.8", "accuracy"),
                     ("trec", "refit class-weight none metric accuracy", "accuracy"), ("trec", "mpnet refit class-weight none", "accuracy"),
                     ("goemotions", "defaults", "macro_f1"),
                     ("goemotions", "thresholds 0.5", "macro_f1"), ("goemotions", "3 epochs", "macro_f1"),
                     ("goemotions", "3 epochs, thresholds 0.5", "macro_f1"), ("goemotions", "lr 2e-4", "macro_f1"),
                     ("goemotions", "lr 2e-4, thresholds 0.5", "macro_f1"), ("goemotions", "7 epochs", "macro_f1"),
                     ("goemotions", "7 epochs, thresholds 0.5", "macro_f1"), ("goemotions", "batch 16", "macro_f1"),
                     ("goemotions", "batch 16, thresholds 0.5", "macro_f1"), ("goemotions", "mpnet 2 epochs", "macro_f1"),
                     ("goemotions", "mpnet 2 epochs, thresholds 0.5", "macro_f1"), ("goemotions", "refit", "macro_f1"),
                     ("goemotions", "refit, thresholds 0.5", "macro_f1"), ("goemotions", "label-smoothing 0.1", "macro_f1"),
                     ("goemotions", "label-smoothing 0.1, thresholds 0.5", "macro_f1"), ("goemotions", "ema 0.999", "macro_f1"),
                     ("goemotions", "ema 0.999, thresholds 0.5", "macro_f1"), ("goemotions", "refit ema 0.999", "macro_f1"),
                     ("goemotions", "refit ema 0.999, thresholds 0.5", "macro_f1")}
    assert all(r["epochs"] == [1] for r in rows if r["dataset"] == "goemotions")  # --quick: 1 epoch in every variant
    refit = next(r for r in rows if r["variant"] == "refit")
    assert "--refit" in refit["command"] and refit["train_rows"] == 1000 + 5426  # the whole dev file rejoins the sample
    refit_ema = next(r for r in rows if r["variant"] == "refit ema 0.999")
    assert "--refit --ema-decay 0.999" in refit_ema["command"] and refit_ema["train_rows"] == 1000 + 5426
    markdown = (tmp_path / "accuracy.md").read_text()
    assert "| trec | defaults | test (500) | accuracy |" in markdown and "| goemotions | thresholds 0.5 |" in markdown
    trec_line = next(line for line in markdown.splitlines() if line.startswith("| trec | defaults |"))
    assert f"| {Path(tiny_model_dir).name} | 160 (sample of 200) |" in trec_line  # the model column: the directory's name


def test_one_variant_runs_alone_and_finished_runs_are_reused(tmp_path, tiny_model_dir):
    first = run(tmp_path, tiny_model_dir, "emotion", "1", "--variants", "class-weight none")
    assert {(r["variant"], r["metric"]) for r in first["rows"]} == {("class-weight none", "accuracy"),
                                                                   ("class-weight none", "macro_f1")}
    assert "reused" not in first["log"]
    plain = run(tmp_path, tiny_model_dir, "emotion", "1")  # the suite: the defaults alone train, the variant's rows stay
    assert "emotion defaults seed 1" in plain["log"] and "class-weight none seed" not in plain["log"]
    assert {r["variant"] for r in plain["rows"]} == {"defaults", "class-weight none"}
    again = run(tmp_path, tiny_model_dir, "emotion", "1", "--variants", "defaults,class-weight none", "--reuse")
    assert again["log"].count("reused the finished run") == 2
    assert [r for r in again["rows"] if r["variant"] == "defaults"] == [r for r in plain["rows"] if r["variant"] == "defaults"]
    assert {r["variant"] for r in again["rows"]} == {"defaults", "class-weight none"}
    unweighted = [r for r in again["rows"] if r["variant"] == "class-weight none"]
    assert unweighted == first["rows"]  # read back, not retrained: same scores, wall time and peak RSS


def test_a_dataset_outside_the_suite_runs_with_no_target_and_a_folder_without_splits_is_refused(tmp_path, tiny_model_dir):
    rows = run(tmp_path, tiny_model_dir, "rotten_tomatoes", "1")["rows"]
    assert [(r["split"], r["metric"], r["target"]) for r in rows] == [
        ("dev", "accuracy", None), ("dev", "macro_f1", None), ("test", "accuracy", None), ("test", "macro_f1", None)]
    assert rows[0]["rows"] == 1066 and "rotten_tomatoes/dev.csv" in rows[0]["command"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick", "--datasets", "ag_news",
                           "--output", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "ag_news has no train.csv: a dataset needs train.csv and test.csv" in proc.stderr


def test_a_dataset_shipped_as_one_file_is_cross_validated_a_fold_per_seed(tmp_path, tiny_model_dir):
    rows = run(tmp_path, tiny_model_dir, "mr", "3,13,4")["rows"]
    assert [(r["split"], r["metric"]) for r in rows] == [("CV fold S mod 10", "accuracy"), ("CV fold S mod 10", "macro_f1")]
    assert rows[0]["seeds"] == [3, 13, 4] and rows[0]["rows"] in (1066, 1067) and "mr-cv10-foldK-train-200.csv" in rows[0]["command"]
    data = tmp_path / "runs" / "data"
    read = lambda fold, part: (data / f"mr-cv10-fold{fold}-{part}.csv").read_text().splitlines()[1:]  # noqa: E731
    assert sorted(read(3, "train") + read(3, "test")) == sorted(read(4, "train") + read(4, "test"))  # each fold: all 10,662 rows
    assert len(read(3, "train")) + len(read(3, "test")) == 10662 and not set(read(3, "test")) & set(read(4, "test"))
    command = lambda seed: json.loads((tmp_path / "runs" / f"mr-seed{seed}" / "bench-run.json").read_text())["command"]  # noqa: E731
    assert any(part.endswith("mr-cv10-fold3-test.csv") for part in command(13))  # seeds 3 and 13 test the same fold
    assert any(part.endswith("mr-cv10-fold4-test.csv") for part in command(4))


def test_shown_command_marks_only_the_runs_own_seed(monkeypatch):
    """A teacher trained with seed 42 keeps its path when the student's last seed is 42 too (it once read seedS)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    command = [sys.executable, "-m", "bertclf", "train", str(accuracy.DATASETS / "sst2" / "train.csv"),
               "--teacher", str(REPO / "runs/teachers/sst2_sentences-mpnet-seed42"), "--seed", "42",
               "--output", str(REPO / "runs/accuracy/sst2-distilled-from-mpnet-seed42"), "--quiet"]
    assert accuracy.shown_command(command, 42, cross_validated=False) == (
        "python -m bertclf train ../shared/datasets/sst2/train.csv --teacher runs/teachers/sst2_sentences-mpnet-seed42 "
        "--seed S --output runs/accuracy/sst2-distilled-from-mpnet-seedS --quiet")
    folds = [sys.executable, "-m", "bertclf", "train", "/w/data/mr-cv10-fold2-train.csv", "--test", "/w/data/mr-cv10-fold2-test.csv",
             "--seed", "42", "--output", "/w/mr-seed42"]
    assert accuracy.shown_command(folds, 42, cross_validated=True).endswith(
        "/w/data/mr-cv10-foldK-train.csv --test /w/data/mr-cv10-foldK-test.csv --seed S --output /w/mr-seedS")


def test_every_teacher_a_variant_distils_from_has_the_command_that_trains_it(monkeypatch):
    """A missing teacher stops the bench before any run with the command that trains it, so each must have one."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    folders = {flags[flags.index(flag) + 1] for name in accuracy.SUITE for flags in accuracy.variant_flags(name).values()
               for flag in ("--teacher", "--model")
               if flag in flags and flags[flags.index(flag) + 1].startswith(str(accuracy.TEACHERS_DIR))}
    assert folders == {accuracy.teacher(name) for name in accuracy.TEACHERS}
    assert all(f"--output runs/teachers/{name}" in command or command.endswith(f"> runs/teachers/{name}")
               for name, command in accuracy.TEACHERS.items())


def refusal(monkeypatch, accuracy, dataset: str, variant: str, output, capsys) -> str:
    """What bench/accuracy.py's main() says as it stops, non-zero, before training anything."""
    monkeypatch.setattr(accuracy, "run_once", lambda *args, **kwargs: pytest.fail("trained before saying what is missing"))
    monkeypatch.setattr(sys, "argv", ["accuracy.py", "--datasets", dataset, "--variants", variant, "--output", str(output)])
    with pytest.raises(SystemExit) as stopped:
        accuracy.main()
    assert stopped.value.code != 0
    return capsys.readouterr().err


def test_a_missing_joined_teacher_is_made_after_the_teachers_it_joins(monkeypatch, tmp_path, capsys):
    """TREC's averaged teacher joins two cross-fitted teachers' files: on a fresh clone the bench must say to make
    those first (and the larger model before them), not only the command that joins them, which would fail."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    monkeypatch.setattr(accuracy, "TEACHERS_DIR", tmp_path)
    both, first, second = "trec-mpnet-crossfit2-both.csv", "trec-mpnet-crossfit2.csv", "trec-mpnet-crossfit2-seed43.csv"
    assert accuracy.teacher_commands(both) == [accuracy.TEACHERS[first], accuracy.TEACHERS[second], accuracy.TEACHERS[both]]
    (tmp_path / first).write_text("text,label\n")
    assert accuracy.teacher_commands(both) == [accuracy.TEACHERS[second], accuracy.TEACHERS[both]]
    assert all(accuracy.teacher_commands(name) == [accuracy.TEACHERS[name]] for name in accuracy.TEACHERS if name != both)

    variant = "refit class-weight none distilled from both cross-fitted mpnets"
    flags = accuracy.variant_flags("trec")[variant]
    flags = [*flags[:flags.index("--teacher") + 1], str(tmp_path / both), *flags[flags.index("--teacher") + 2:]]
    monkeypatch.setattr(accuracy, "variant_flags", lambda name: {variant: flags})
    monkeypatch.setattr(accuracy, "MPNET", str(tmp_path / "models" / "all-mpnet-base-v2"))  # not there
    said = refusal(monkeypatch, accuracy, "trec", variant, tmp_path / "out", capsys)
    assert (f"make it first with bash scripts/get_mpnet.sh && {accuracy.TEACHERS[second]} && {accuracy.TEACHERS[both]}, "
            "or leave the variant out") in said
    assert not (tmp_path / "out").exists()


def test_a_missing_start_model_is_named_with_the_command_that_makes_it(monkeypatch, tmp_path, capsys):
    """IMDB's "from sst2 minilm" variant fine-tunes an SST-2 model of runs/teachers (--model) instead of the default
    one: without it the bench stops before training and says how to make it, as for a missing teacher."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    variant, start = "head-tail 12000 reviews 1 epoch from sst2 minilm", "sst2-minilm-ema-seed43"
    flags = accuracy.variant_flags("imdb")[variant]
    assert flags[flags.index("--model") + 1] == accuracy.teacher(start)
    assert accuracy.teacher_commands(start) == [accuracy.TEACHERS[start]]  # its own teacher: checked when it runs
    flags = [*flags[:flags.index("--model") + 1], str(tmp_path / start), *flags[flags.index("--model") + 2:]]
    monkeypatch.setattr(accuracy, "variant_flags", lambda name: {variant: flags})
    said = refusal(monkeypatch, accuracy, "imdb", variant, tmp_path / "out", capsys)
    assert f"imdb '{variant}' starts from it; make it first with {accuracy.TEACHERS[start]}, or leave" in said
    assert not (tmp_path / "out").exists()


def first_command(monkeypatch, dataset: str, variant: str, work, quick: bool = False) -> list[str]:
    """The `bertclf train` command bench/accuracy.py would run first for a variant (nothing is trained)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    class Ran(Exception):
        pass

    def record_command(command, reuse=False):
        raise Ran(command)

    monkeypatch.setattr(accuracy, "run_once", record_command)
    try:
        accuracy.dataset_rows(dataset, variant, [42], None, work, quick=quick)
    except Ran as ran:
        return ran.args[0]
    raise AssertionError(f"{dataset} {variant} ran no command")


def test_a_variant_can_train_on_its_own_sample_size(monkeypatch, tmp_path):
    """IMDB's "head-tail 6000 reviews" trains on a 6,000-review sample; the dataset's other variants keep its 3,000.
    A variant's own --epochs (or --max-length) replaces the dataset's instead of following it."""
    trained, epochs, lengths = {}, {}, {}
    for variant in ("max-length 256", "head-tail", "head-tail 6000 reviews", "head-tail 12000 reviews 1 epoch", "head-tail 15000 reviews 1 epoch"):
        command = first_command(monkeypatch, "imdb", variant, tmp_path)
        trained[variant] = command[4]
        epochs[variant] = [command[at + 1] for at, token in enumerate(command) if token == "--epochs"]
        lengths[variant] = [command[at + 1] for at, token in enumerate(command) if token == "--max-length"]
    assert trained == {"max-length 256": str(tmp_path / "data" / "imdb-train-3000.csv"),
                       "head-tail": str(tmp_path / "data" / "imdb-train-3000.csv"),
                       "head-tail 6000 reviews": str(tmp_path / "data" / "imdb-train-6000.csv"),
                       "head-tail 12000 reviews 1 epoch": str(tmp_path / "data" / "imdb-train-12000.csv"),
                       "head-tail 15000 reviews 1 epoch": str(tmp_path / "data" / "imdb-train-15000.csv")}
    assert lengths == {"max-length 256": ["256"], **{v: ["512"] for v in trained if v != "max-length 256"}}
    assert epochs == {"max-length 256": ["2"], "head-tail": ["2"], "head-tail 6000 reviews": ["2"], "head-tail 12000 reviews 1 epoch": ["1"],
                      "head-tail 15000 reviews 1 epoch": ["1"]}
    assert len(pd.read_csv(tmp_path / "data" / "imdb-train-6000.csv")) == 6000


def test_a_variant_with_a_transfer_set_passes_sentences_of_another_dataset_as_unlabeled(monkeypatch, tmp_path):
    """SST-2's "+ 30000 imdb sentences" variant: distinct sentences of IMDB's train reviews, 4 to 50 words, no markup."""
    for quick, rows in ((False, 30000), (True, 200)):
        command = first_command(monkeypatch, "sst2", "distilled from phrase-trained mpnet + 30000 imdb sentences", tmp_path, quick)
        path = command[command.index("--unlabeled") + 1]
        assert path == str(tmp_path / "data" / f"imdb-train-sentences-{rows}.csv") and "--teacher" in command
        averaged = first_command(monkeypatch, "sst2", "distilled from phrase-trained mpnet + 30000 imdb sentences ema 0.999", tmp_path, quick)
        assert averaged[averaged.index("--unlabeled") + 1] == path and "--ema-decay 0.999" in " ".join(averaged)
        sentences = pd.read_csv(path, keep_default_na=False)
        assert list(sentences.columns) == ["text"] and len(sentences) == rows == sentences.text.nunique()
        words = sentences.text.str.split().str.len()
        assert words.between(4, 50).all() and not sentences.text.str.contains("<br").any()


def test_trecs_transfer_set_holds_questions_of_other_datasets_and_no_trec_text(monkeypatch, tmp_path):
    """TREC's "+ 6000 questions" variant: wh-questions from Banking77's, GoEmotions' and IMDB's train files (their
    sentences that start with a question word and end with "?"), none of them a TREC question, train or test."""
    variant = "refit class-weight none distilled from mpnet + 6000 questions"
    command = first_command(monkeypatch, "trec", variant, tmp_path)
    path = command[command.index("--unlabeled") + 1]
    assert path == str(tmp_path / "data" / "banking77+goemotions+imdb-train-questions-6000.csv") and "--teacher" in command
    questions = pd.read_csv(path, keep_default_na=False).text
    assert len(questions) == 6000 == questions.nunique() and questions.str.endswith("?").all()
    assert questions.str.match(r"(?i)(what|which|who|whom|whose|where|when|why|how|name)\b").all()
    trec = pd.concat([pd.read_csv(DATASETS / "trec" / f"{part}.csv", keep_default_na=False).text for part in ("train", "test")])
    assert not set(questions) & set(trec)


def test_targets_at_a_glance_set_each_target_beside_the_defaults_and_the_best_row_on_the_defaults_model(monkeypatch):
    """The larger model's higher row must not stand in for the default model's, nor a one-seed trial for a mean over
    seeds, and a miss says by how much."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    def row(variant: str, split: str, mean: float, model: str = "minilm", seeds: tuple = (42, 43, 44)) -> dict:
        return {"dataset": "trec", "variant": variant, "split": split, "metric": "accuracy", "mean": mean, "std": 0.001,
                "seeds": list(seeds), "target": 0.97, "model": model}

    rows = [row("defaults", "test", 0.960), row("refit", "test", 0.966, seeds=(42, 43, 44, 45, 46)),
            row("mpnet refit", "test", 0.976, model="mpnet"), row("other split", "dev", 0.990),
            row("one-seed trial", "test", 0.975, seeds=(42,)), row("two-seed trial", "test", 0.974, seeds=(42, 43))]
    glance = accuracy.targets_at_a_glance(rows)
    lines = [line for line in glance if line.startswith("| trec")]
    assert lines == ["| trec | test | accuracy | 0.970 | 0.9600 ± 0.0010 (3 seeds) | refit | 0.9660 ± 0.0010 (5 seeds) "
                     "| 2 | **missed** by 0.40 point |"]  # picked from the defaults and refit: not mpnet, nor the trials
    rows.append(row("refit distilled", "test", 0.971))
    assert [line for line in accuracy.targets_at_a_glance(rows) if line.startswith("| trec")][0].endswith("| refit distilled | 0.9710 ± 0.0010 (3 seeds) | 3 | met |")
    assert accuracy.targets_at_a_glance([row("refit", "test", 0.966)]) == []  # no defaults row: nothing to set it beside


def test_a_cross_fitted_teacher_scores_each_text_by_the_fold_model_that_did_not_learn_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import crossfit_teacher

    train = subset("trec", "train", 60)  # 10 questions per label
    train.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "teacher.csv"
    crossfit_teacher.main([str(tmp_path / "train.csv"), "--folds", "2", "--output", str(out), "--",
                           "--model", tiny_model_dir, "--epochs", "1", "--max-length", "32"])
    joined = pd.read_csv(out, keep_default_na=False)
    assert sorted(joined.text) == sorted(train.text)
    assert sorted(c for c in joined.columns if c.startswith("prob_")) == sorted(f"prob_{label}" for label in set(train.label))
    for k in (0, 1):
        learned = pd.read_csv(tmp_path / "teacher" / f"fold{k}-train.csv", keep_default_na=False)
        scored = pd.read_csv(tmp_path / "teacher" / f"fold{k}-predictions.csv", keep_default_na=False)
        assert set(learned.label) == set(train.label) and not set(learned.text) & set(scored.text)
        assert len(learned) + len(scored) == len(train)
    one_abbr = train[(train.label != "ABBR") | ~train.index.isin(train[train.label == "ABBR"].index[1:])]
    one_abbr.to_csv(tmp_path / "rare.csv", index=False)
    with pytest.raises(SystemExit, match=r"fold [01]'s teacher would not see the labels \['ABBR'\]"):  # before any training
        crossfit_teacher.main([str(tmp_path / "rare.csv"), "--folds", "2", "--output", str(tmp_path / "rare-teacher.csv"), "--",
                               "--model", tiny_model_dir, "--epochs", "1"])
    assert not list((tmp_path / "rare-teacher").glob("fold*"))  # refused before any fold was written or trained


def test_seeds_added_to_a_row_join_its_earlier_seeds_without_their_models(tmp_path, tiny_model_dir):
    together = run(tmp_path / "together", tiny_model_dir, "trec", "1,2")["rows"][0]
    first = run(tmp_path / "apart", tiny_model_dir, "trec", "1")["rows"][0]
    table = tmp_path / "apart" / "accuracy.json"
    rows = json.loads(table.read_text())["rows"]
    rows[0]["note"] = "seed 1 ran on another machine"
    table.write_text(json.dumps({"rows": rows}))
    shutil.rmtree(tmp_path / "apart" / "runs" / "trec-seed1")  # the earlier seed's model is not on this machine

    added = run(tmp_path / "apart", tiny_model_dir, "trec", "2", "--add-seeds")["rows"][0]
    assert added["seeds"] == [1, 2] and added["values"] == together["values"]
    assert (added["mean"], added["std"]) == (together["mean"], together["std"])
    assert added["epochs"] == together["epochs"] and added["best_epochs"] == together["best_epochs"]
    assert added["note"] == "seed 1 ran on another machine" and added["command"] == first["command"]
    assert first["peak_rss_mb"] is None or added["peak_rss_mb"] >= first["peak_rss_mb"]  # the higher of the two seeds'

    again = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick", "--datasets", "trec", "--seeds", "2,3",
                            "--model", tiny_model_dir, "--output", str(tmp_path / "apart"), "--add-seeds"], capture_output=True, text=True)
    assert again.returncode != 0 and "already has seeds [2]" in again.stderr and "trec defaults seed" not in again.stderr  # before any run
    nothing = subprocess.run([sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick", "--datasets", "emotion", "--seeds", "3",
                              "--model", tiny_model_dir, "--output", str(tmp_path / "apart"), "--add-seeds"], capture_output=True, text=True)
    assert nothing.returncode != 0 and "no emotion 'defaults' rows to add seeds to" in nothing.stderr
    assert json.loads(table.read_text())["rows"] == [added]  # the refused runs left the table as it was


def test_seeds_that_ran_another_command_are_not_added_to_a_row(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from accuracy import with_earlier_seeds

    earlier = {"dataset": "trec", "variant": "defaults", "split": "test", "metric": "accuracy", "seeds": [1], "values": [0.9],
               "epochs": [3], "best_epochs": [2], "wall_s": 100, "samples_per_s": 10.0, "peak_rss_mb": 900, "precision": "fp32",
               "cpu": "AMD EPYC", "command": "python -m bertclf train trec/train.csv --seed S"}
    new = {**earlier, "seeds": [2], "values": [0.8], "wall_s": 200, "samples_per_s": 20.0, "peak_rss_mb": 800, "precision": "bf16",
           "cpu": "Intel Xeon"}
    joined = with_earlier_seeds([new], [earlier])[0]
    assert (joined["mean"], joined["wall_s"], joined["samples_per_s"], joined["peak_rss_mb"]) == (0.85, 150, 15.0, 900)
    assert (joined["precision"], joined["cpu"]) == ("bf16/fp32", "AMD EPYC; Intel Xeon")
    unrecorded = {k: v for k, v in earlier.items() if k not in ("precision", "cpu")}  # as most of the table's older rows
    joined = with_earlier_seeds([new], [unrecorded])[0]
    assert (joined["precision"], joined["cpu"]) == ("bf16/not recorded", "Intel Xeon; not recorded")
    with pytest.raises(ValueError, match="the earlier seeds ran"):
        with_earlier_seeds([{**new, "command": new["command"] + " --lr 3e-5"}], [earlier])
