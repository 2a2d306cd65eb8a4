"""`bertclf tune`: a 3-trial search with the tiny model on real SST-2 rows; study, best YAML, report, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from bertclf.cli import main

from .conftest import child_env, subset


@pytest.fixture
def tune_args(tmp_path, write, tiny_model_dir):
    train = write("train.csv", subset("sst2_sentences", "train", 160, seed=7))
    dev = write("dev.csv", subset("sst2_sentences", "dev", 60, seed=7))
    test = write("test.csv", subset("sst2_sentences", "test", 60, seed=7))
    space = write("space.yaml", "epochs: {low: 1, high: 2}\nbatch-size: [8, 16]\nlr: {low: 1e-4, high: 3e-3, log: true}\n"
                                "layer-lr-decay: {low: 0.5, high: 1.0}\nlabel-smoothing: {low: 0.0, high: 0.2}\n"
                                "ema-decay: [0.0, 0.9]\n")
    config = write("base.yaml", "max-length: 48\nepochs: 2\nbatch-size: 16\nlr: 1e-3\n")
    return {"train": train, "dev": dev, "test": test, "space": space, "config": config, "model": tiny_model_dir,
            "out": str(tmp_path / "study")}


def test_default_space_searches_class_weighting_only_for_imbalanced_single_label_data():
    from bertclf.tune import default_space

    defaults = {"lr": 1e-4, "epochs": 3}
    assert default_space(defaults, 40, 9.4, 512, multilabel=False)["class_weight"] == ["none", "balanced"]
    assert "class_weight" not in default_space(defaults, 40, 1.2, 512, multilabel=False)
    assert "class_weight" not in default_space(defaults, 40, 185.0, 512, multilabel=True)
    assert "max_length" not in default_space(defaults, 40, 1.0, 512, multilabel=False)  # no text is cut at 128


def command(a: dict, trials: int) -> list[str]:
    return ["tune", a["train"], "--dev", a["dev"], "--test", a["test"], "--output", a["out"], "--trials", str(trials),
            "--space", a["space"], "--config", a["config"], "--model", a["model"], "--quiet"]


def study(a: dict) -> optuna.Study:
    return optuna.load_study(study_name="bertclf", storage=f"sqlite:///{a['out']}/study.db")


def test_three_trials_then_resume_to_four(tune_args, capsys):
    a = tune_args
    assert main(command(a, 3)) == 0
    s = study(a)
    finished = [t for t in s.trials if t.state.is_finished()]
    assert len(finished) == 3
    first = s.trials[0]
    assert first.user_attrs["defaults"]
    assert first.params == {"epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.01,
                            "layer_lr_decay": 1.0, "label_smoothing": 0.0, "ema_decay": 0.0}
    for name in ("best.yaml", "report.md", "report.png", "trials.csv", "model/bertclf.json", "model/config.json"):
        assert os.path.exists(os.path.join(a["out"], name)), name
    report = open(os.path.join(a["out"], "report.md")).read()
    assert "defaults (trial 0): dev" in report and "best (trial" in report
    record = json.load(open(os.path.join(a["out"], "model", "bertclf.json")))
    assert record["tuning"]["trial"] == s.best_trial.number
    assert record["metrics"]["dev"]["macro_f1"] == pytest.approx(s.best_value)

    # The best YAML trains, with plain 'bertclf train', to the score the study reported.
    best = yaml.safe_load(open(os.path.join(a["out"], "best.yaml")))
    assert best["lr"] == s.best_params["lr"] and best["layer-lr-decay"] == s.best_params["layer_lr_decay"]
    assert best["label-smoothing"] == s.best_params["label_smoothing"] and best["ema-decay"] == s.best_params["ema_decay"]
    assert best["max-length"] == 48
    out = os.path.join(a["out"], "..", "retrained")
    assert main(["train", a["train"], "--dev", a["dev"], "--config", os.path.join(a["out"], "best.yaml"), "-o", out,
                 "--quiet"]) == 0
    retrained = json.load(open(os.path.join(out, "bertclf.json")))
    assert retrained["metrics"]["dev"]["macro_f1"] == pytest.approx(s.best_value, abs=1e-9)

    # Rerun with a larger count: the same study continues, earlier trials untouched.
    assert main(command(a, 4)) == 0
    again = study(a)
    assert len([t for t in again.trials if t.state.is_finished()]) == 4
    assert [t.params for t in again.trials[:3]] == [t.params for t in s.trials[:3]]


def test_a_killed_run_loses_only_its_running_trial(tune_args):
    a = tune_args
    proc = subprocess.Popen([sys.executable, "-m", "bertclf", *command(a, 3)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until trial 1 is running, trial 0 done
        try:
            trials = study(a).trials
        except Exception:  # noqa: BLE001 — the study or its database does not exist yet
            trials = []
        if len(trials) >= 2 and trials[0].state.is_finished() and trials[1].state.name == "RUNNING":
            break
        if proc.poll() is not None:
            pytest.fail(f"tune ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = study(a).trials
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"

    assert main(command(a, 3)) == 0
    after = study(a).trials
    assert after[0].params == before[0].params and after[0].value == before[0].value  # kept, not rerun
    assert len([t for t in after if t.state.is_finished()]) == 3


@pytest.mark.parametrize("extra, message", [
    (["--budget", "soon"], "--budget soon: expected a duration like 90s, 45m or 1h"),
    (["--trials", "0"], "--trials 0: must be at least 1"),
])
def test_bad_tune_options(tune_args, capsys, extra, message):
    a = tune_args
    argv = [x for x in command(a, 3) if x not in ("--trials", "3")] + extra
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_space_file_errors(tune_args, write, capsys):
    a = tune_args
    bad = write("bad.yaml", "dropout: [0.1, 0.2]\n")
    assert main([*command(a, 1)[:-1], "--space", bad, "--quiet"]) == 2
    assert "cannot search ['dropout']" in capsys.readouterr().err
    assert main(["tune", a["train"], "--output", a["out"]]) == 2
    assert "--trials N or --budget 1h" in capsys.readouterr().err
