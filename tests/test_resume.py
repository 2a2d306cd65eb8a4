"""Kill training on purpose (SIGKILL mid-epoch, Ctrl-C), resume, and get the uninterrupted run's exact result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from bertclf.checkpoints import BEST_FILE, PROGRESS_FILE, complete, directory_for, remove_orphans
from bertclf.cli import main

from .conftest import child_env, subset

BATCHES_PER_EPOCH = 40  # 320 rows / batch 8


@pytest.fixture
def common(tmp_path, write, tiny_model_dir):
    train = write("train.csv", subset("sst2_sentences", "train", 320, seed=3))
    dev = write("dev.csv", subset("sst2_sentences", "dev", 80, seed=3))
    return ["train", train, "--dev", dev, "--model", tiny_model_dir, "--epochs", "2", "--batch-size", "8",
            "--lr", "1e-3", "--max-length", "64", "--patience", "0",
            "--checkpoint-every", "10", "--quiet"]


def start(argv: list) -> subprocess.Popen:
    # SIGINT at its default in the child, as in a terminal: a suite run in the background of a non-interactive shell
    # (`pytest &`, nohup) inherits SIGINT ignored, and the Ctrl-C test's signal would be lost.
    return subprocess.Popen([sys.executable, "-m", "bertclf", *map(str, argv)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run(argv: list) -> int:
    return main([str(a) for a in argv])


def wait_for_step(proc: subprocess.Popen, checkpoints: str, step: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        names = [os.path.basename(p) for p in complete(checkpoints)]
        if any(int(n.split("-")[1]) >= step for n in names):
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint at step {step} within {timeout} s")


def killed_at_step(argv: list, out, step: int) -> None:
    """Train into ``out`` and SIGKILL the process once a checkpoint at ``step`` (or later) is complete."""
    proc = start([*argv, "-o", out])
    wait_for_step(proc, directory_for(str(out)), step)
    proc.kill()
    proc.wait()


def record_without_timings(path) -> dict:
    record = json.load(open(path / "bertclf.json"))
    for row in record["history"]:
        row.pop("seconds"), row.pop("samples_per_s")
    return {k: record[k] for k in ("history", "best_epoch", "metrics", "classes")}


@pytest.mark.parametrize("flags", [["--precision", "fp32"], ["--precision", "bf16"],
                                   ["--precision", "fp32", "--ema-decay", "0.99", "--val-fraction", "0"]],
                         ids=["fp32", "bf16", "ema"])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path, common, flags):
    """Exact on CPU in both precisions: every RNG state, the batch position and the weight average are restored.
    The average is checked without a dev set: the model is then the average at the last step, where with one it
    would be the best epoch's, saved apart (and the tiny model's best is often epoch 1, before the kill)."""
    if "--val-fraction" in flags:
        at = common.index("--dev")
        common = common[:at] + common[at + 2:]
    common = [*common, *flags]
    assert run([*common, "-o", tmp_path / "straight"]) == 0

    killed = tmp_path / "killed"
    killed_at_step(common, killed, BATCHES_PER_EPOCH + 10)  # inside epoch 2
    assert not killed.exists(), "a killed run must not leave an artifact"
    assert run([*common, "-o", killed, "--resume"]) == 0

    straight, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all((straight[k] == resumed[k]).all() for k in straight), "resumed weights differ from the straight run"
    assert record_without_timings(killed) == record_without_timings(tmp_path / "straight")
    assert not os.path.exists(directory_for(str(killed))), "checkpoints are removed once the artifact exists"


def test_ctrl_c_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, common):
    out = tmp_path / "interrupted"
    # 50 epochs (2,000 steps): the signal lands mid-run even when a loaded machine delays it (with 2 epochs, a run
    # once finished its last 60 steps before the signal arrived and exited 0).
    proc = start([*common, "--epochs", "50", "-o", out])
    wait_for_step(proc, directory_for(str(out)), 20)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: no model was written; the last checkpoint is" in err and "--resume" in err
    assert not out.exists()
    kept = complete(directory_for(str(out)))
    assert kept and not [p for p in os.listdir(directory_for(str(out))) if ".tmp-" in p]


def test_resume_refuses_changed_settings(tmp_path, common, capsys):
    out = tmp_path / "changed"
    killed_at_step(common, out, 10)
    changed = [a if a != "1e-3" else "2e-3" for a in common]
    assert run([*changed, "-o", out, "--resume"]) == 2
    assert "the checkpoint was made with different lr" in capsys.readouterr().err


def test_a_checkpoint_older_than_a_setting_resumes_at_its_default_and_only_there(tmp_path, common, capsys):
    """A checkpoint written before ``label_smoothing`` existed has no such key; resuming took that as a change."""
    out = tmp_path / "older"
    killed_at_step(common, out, 10)
    for path in complete(directory_for(str(out))):
        with open(os.path.join(path, PROGRESS_FILE), encoding="utf-8") as fh:
            progress = json.load(fh)
        del progress["fingerprint"]["label_smoothing"]
        with open(os.path.join(path, PROGRESS_FILE), "w", encoding="utf-8") as fh:
            json.dump(progress, fh)
    assert run([*common, "--label-smoothing", "0.1", "-o", out, "--resume"]) == 2
    assert "the checkpoint was made with different label_smoothing" in capsys.readouterr().err
    assert run([*common, "-o", out, "--resume"]) == 0
    assert (out / "model.safetensors").exists()


def test_resume_without_checkpoints_is_refused(tmp_path, common, capsys):
    assert run([*common, "-o", tmp_path / "fresh", "--resume"]) == 2
    assert "no complete checkpoint to resume from" in capsys.readouterr().err


OWN_BEST_WEIGHTS = (  # a process that makes its best-weights file, prints its path, then dies or waits for stdin
    "import os, signal, sys, torch; from bertclf.checkpoints import BestWeights; best = BestWeights(); "
    "best.save(torch.nn.Linear(2, 2)); print(best.path, flush=True); "
    "os.kill(os.getpid(), signal.SIGKILL) if sys.argv[1] == 'die' else sys.stdin.read()"
)


def test_a_killed_runs_best_weights_are_removed_by_the_next_run_but_a_live_runs_are_kept(tmp_path):
    def own(how: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen([sys.executable, "-c", OWN_BEST_WEIGHTS, how], env=child_env(TMPDIR=str(tmp_path)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return proc, os.path.dirname(proc.stdout.readline().strip())

    live, live_folder = own("wait")
    killed, killed_folder = own("die")
    assert killed.wait() == -signal.SIGKILL and os.path.isfile(os.path.join(killed_folder, BEST_FILE))
    older = tmp_path / "bertclf-best-from-an-older-version"  # no lock file: whether its run lives is unknown
    older.mkdir()

    assert remove_orphans(str(tmp_path)) == [killed_folder]
    assert not os.path.exists(killed_folder) and os.path.isdir(live_folder) and older.is_dir()

    live.stdin.close()  # it exits normally and removes its own folder
    assert live.wait() == 0 and not os.path.exists(live_folder)
    killed, next_runs_folder = own("die")  # a new run removes nothing of the others' but sweeps before it starts
    assert killed.wait() == -signal.SIGKILL and older.is_dir() and os.path.isdir(next_runs_folder)
    killed, _ = own("die")
    assert killed.wait() == -signal.SIGKILL
    assert not os.path.exists(next_runs_folder), "the next run did not remove the killed run's folder"
