"""Faults and misuse of a run: it must end with an honest status, never lose or overwrite a run,
and refuse what it cannot do before doing any work."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnrnn import checkpoint, engine, io
from bnrnn.checkpoint import CheckpointError
from bnrnn.models.lm import WordLM
from bnrnn.rundir import RunDirError, RunLock, config_changes
from tests.helpers import REPO, cli, corrupt_copy, strip_times, train

TINY = ["experiment=ptb_small", "model.hidden_size=16", "data.limit_batches=4", "data.bptt=5",
        "data.batch_size=4", "quiet=true", "device=cpu", "trainer.check_every=1"]


@pytest.fixture
def tiny(ptb_root):
    return [*TINY, f"data.root={ptb_root}"]


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final.json").read_text())


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- honest status
def test_huge_learning_rate_ends_diverged_not_completed(tiny, tmp_path):
    # lr 1e6 keeps the loss finite but far above a uniform guess's ln|V|
    objective, final, rows = train([*tiny, "optim.lr=1e6", "trainer.max_epochs=2"], tmp_path)
    assert final["status"] == "diverged" and "uniform prediction" in final["error"]
    assert objective == math.inf and final["test"] is None


def test_a_healthy_run_is_never_called_diverged(tiny, tmp_path):
    _, final, rows = train([*tiny, "trainer.max_epochs=2"], tmp_path)
    assert final["status"] == "completed"
    assert all(r["train_loss"] < math.log(10000) + 1 for r in rows)


def test_non_finite_final_metric_is_never_complete(tiny, tmp_path, monkeypatch):
    metrics = WordLM.metrics

    def nan_when_evaluating(totals):
        out = metrics(totals)
        return out | {"ppl": math.nan} if totals["count"] < 400 else out  # eval passes are short

    monkeypatch.setattr(WordLM, "metrics", staticmethod(nan_when_evaluating))
    _, final, _ = train([*tiny, "trainer.max_epochs=1", "data.eval_batch_size=2"], tmp_path)
    assert final["status"] == "diverged" and "non-finite final metrics" in final["error"]


def test_full_disk_is_a_failure_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    save = checkpoint.save
    calls = {"n": 0}

    def save_then_disk_full(path, state):
        calls["n"] += 1
        if Path(path).name == "last.pt" and state["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(path, state)

    monkeypatch.setattr(engine.checkpoint, "save", save_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        train([*tiny, "trainer.max_epochs=3"], tmp_path)
    final = _final(tmp_path)
    assert final["status"] == "failed" and "No space left" in final["error"]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written file left behind



def _disk_full_at(monkeypatch, name: str, epoch: int) -> None:
    save = checkpoint.save

    def save_then_disk_full(path, state):
        if Path(path).name == name and state["epoch"] == epoch:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(path, state)

    monkeypatch.setattr(engine.checkpoint, "save", save_then_disk_full)


@pytest.mark.parametrize("full, best_epoch", [("last.pt", 1), ("best.pt", 2)])
def test_a_resumed_run_tests_the_weights_of_the_best_epoch_it_reports(tiny, tmp_path, monkeypatch,
                                                                     full, best_epoch):
    """The disk fills while epoch 2 (the better one) is written, before or after last.pt; the
    run is resumed with a time box that lets no epoch start. Its test is its reported best
    epoch's, as an uninterrupted run of that many epochs tests it: never the weights of an
    epoch the resume dropped, nor a best.pt older than the best epoch."""
    _, ref, _ = train([*tiny, f"trainer.max_epochs={best_epoch}"], tmp_path / "ref")
    assert ref["best_epoch"] == best_epoch
    _disk_full_at(monkeypatch, full, 2)
    with pytest.raises(OSError, match="No space left"):
        train([*tiny, "trainer.max_epochs=3"], tmp_path / "run")
    monkeypatch.undo()
    _, final, rows = train([*tiny, "trainer.max_epochs=3", "trainer.max_time=1e-6", "resume=true"],
                           tmp_path / "run")
    assert final["status"] == "completed" and [r["epoch"] for r in rows] == list(range(1, best_epoch + 1))
    assert final["best_epoch"] == best_epoch and final["test"] == ref["test"]
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == best_epoch


def test_a_best_checkpoint_of_another_epoch_is_never_tested(tmp_path):
    """A best.pt that does not hold the best epoch (one written by a dropped epoch, before
    best.pt followed last.pt) is refused, never tested as that epoch's weights."""
    best = tmp_path / "best.pt"
    checkpoint.save(best, {"model": {}, "epoch": 3})
    assert engine.load_best(best, {"epoch": 3}, "cpu")["epoch"] == 3
    with pytest.raises(CheckpointError, match="holds epoch 3, but the run's best epoch is 2"):
        engine.load_best(best, {"epoch": 2}, "cpu")
    with pytest.raises(CheckpointError, match="holds epoch None"):
        engine.load_best(tmp_path / "absent.pt", {"epoch": 2}, "cpu")

def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "final.json"
    io.write_json(target, {"status": "completed"})

    def fail(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        io.write_json(target, {"status": "running"})
    assert json.loads(target.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["final.json"]


def test_written_files_are_world_readable(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.md").stat().st_mode) == 0o644


# ---------------------------------------------------------------- no run lost
def test_a_finished_run_is_never_overwritten(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train([*tiny, "trainer.max_epochs=1"], run_dir)
    before = _snapshot(run_dir)
    with pytest.raises(RunDirError, match="already holds a run .*resume=true"):
        train([*tiny, "trainer.max_epochs=1", "optim.lr=0.5"], run_dir)
    assert _snapshot(run_dir) == before


def test_the_cli_refusal_is_one_line_and_touches_nothing(tiny, tmp_path):
    run_dir = tmp_path / "run"
    train([*tiny, "trainer.max_epochs=1"], run_dir)
    before = _snapshot(run_dir)
    p = cli([*tiny, "trainer.max_epochs=1", "optim.lr=0.5", f"hydra.run.dir={run_dir}"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "already holds a run" in p.stderr
    after = _snapshot(run_dir)
    assert after.pop("train.log", b"") == b""  # Hydra's log file, opened for appending
    assert after == before  # .hydra/ included: the record of the finished run is intact


@pytest.mark.parametrize("multirun", [False, True])
def test_a_run_directory_that_is_a_file_is_refused_in_one_line(tiny, tmp_path, multirun):
    """Hydra creates the run (sweep) directory before any of bnrnn's code runs: a file there
    failed with Hydra's traceback of its mkdir."""
    file = tmp_path / "final.json"
    file.write_text("{}")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    for target, what in ((file, "is a file"), (file / "run", f"lies under the file {file}")):
        p = cli([*(["-m"] if multirun else []), *tiny, f"{key}={target}"])
        assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stderr
        assert [line for line in p.stderr.splitlines() if line.strip()] == [
            f"bnrnn: {key}={target}: {what}, not a directory; choose another {key}"]
    assert file.read_text() == "{}" and sorted(tmp_path.iterdir()) == [file]


def test_two_processes_cannot_share_a_run_directory(tiny, tmp_path):
    lock = RunLock(tmp_path)  # another "process" holds the directory
    try:
        with pytest.raises(RunDirError, match=f"in use by another training process \\(pid {os.getpid()}\\)"):
            train([*tiny, "trainer.max_epochs=1"], tmp_path)
    finally:
        lock.release()
    assert not (tmp_path / "final.json").exists()
    train([*tiny, "trainer.max_epochs=1"], tmp_path)  # free again once released


def test_resume_refuses_a_changed_config_and_names_the_difference(tiny, tmp_path):
    train([*tiny, "trainer.max_epochs=1"], tmp_path)
    with pytest.raises(RunDirError, match=r"optim\.lr: 1\.0 -> 0\.5"):
        train([*tiny, "trainer.max_epochs=2", "optim.lr=0.5", "resume=true"], tmp_path)
    _, final, rows = train([*tiny, "trainer.max_epochs=2", "resume=true"], tmp_path)  # allowed
    assert final["status"] == "completed" and [r["epoch"] for r in rows] == [1, 2]


def test_config_changes_lists_every_difference_but_the_allowed_ones():
    saved = {"optim": {"lr": 1.0}, "trainer": {"max_epochs": 2, "clip_grad_norm": 5}, "data": {"root": "a"}}
    new = {"optim": {"lr": 1.0}, "trainer": {"max_epochs": 9, "clip_grad_norm": 10}, "data": {"root": "b"},
           "model": {"norm": "ln"}}
    assert config_changes(saved, new) == ["model.norm: '<absent>' -> 'ln'",
                                          "trainer.clip_grad_norm: 5 -> 10"]


def test_resume_without_a_checkpoint_is_refused(tiny, tmp_path):
    with pytest.raises(RunDirError, match="no checkpoint .*holds no run"):
        train([*tiny, "resume=true"], tmp_path / "empty")
    assert not (tmp_path / "empty" / "final.json").exists()


def test_a_corrupt_checkpoint_is_one_clear_error_naming_the_file(tiny, tmp_path):
    train([*tiny, "trainer.max_epochs=1"], tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=f"{last}.*truncated or corrupt"):
        checkpoint.load(last)
    p = cli([*TINY, f"data.root={tiny[-1].split('=', 1)[1]}", "trainer.max_epochs=2", "resume=true",
             f"hydra.run.dir={tmp_path}"])
    assert p.returncode == 2 and "cannot be read" in p.stderr
    assert "weights_only" not in p.stderr and "Traceback" not in p.stderr


def test_a_failure_is_recorded_with_its_traceback(ptb_root, tmp_path):
    run_dir = tmp_path / "run"
    # a corrupt data file fails inside the run, after the directory is claimed (a missing one
    # is refused before: tests/test_config.py)
    corrupt = corrupt_copy(ptb_root, tmp_path / "corrupt")
    args = [a for a in TINY] + [f"data.root={corrupt}", "data.download=false",
                                f"hydra.run.dir={run_dir}"]
    p = cli(args)
    assert p.returncode == 1
    final = _final(run_dir)
    assert final["status"] == "failed" and "checksum mismatch" in final["error"]
    assert str(corrupt) in final["error"]
    assert "Traceback" in (run_dir / "train.log").read_text()



def test_a_resume_that_fails_before_continuing_leaves_the_record_as_it_was(tiny, tmp_path):
    """A resume that cannot even start (its data root, which may change on resume, holds a
    corrupt file) has not touched the run: the completed run's final.json (epochs, best, test)
    and .hydra/ stay byte for byte, never 'failed with 0 epochs'."""
    run_dir = tmp_path / "run"
    train([*tiny, "trainer.max_epochs=1"], run_dir)
    before = _snapshot(run_dir)
    corrupt = corrupt_copy(Path(tiny[-1].split("=", 1)[1]), tmp_path / "corrupt")
    with pytest.raises(Exception, match="checksum mismatch"):
        train([*TINY, f"data.root={corrupt}", "data.download=false",
               "trainer.max_epochs=2", "resume=true"], run_dir)
    assert _snapshot(run_dir) == before
    assert _final(run_dir)["status"] == "completed"


# ---------------------------------------------------------------- signals
def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "bnrnn.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(proc: subprocess.Popen, run_dir: Path, timeout: float = 240):
    """Until ``run_dir`` has the checkpoint of its first epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no epoch finished in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_interrupted_with_its_exit_code(tiny, tmp_path, sig, code):
    proc = _start([*tiny, "trainer.max_epochs=1000", f"hydra.run.dir={tmp_path}"])
    _wait_for_epoch(proc, tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    final = _final(tmp_path)
    assert final["status"] == "interrupted" and signal.Signals(sig).name in final["error"]
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] >= 1


def test_an_interrupted_sweep_stops(tiny, tmp_path):
    proc = _start(["-m", *tiny, "trainer.max_epochs=1000", "seed=1,2", f"hydra.sweep.dir={tmp_path}"])
    _wait_for_epoch(proc, tmp_path / "0")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert _final(tmp_path / "0")["status"] == "interrupted"
    assert not (tmp_path / "1").exists()  # the second job never started


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_run(tiny, tmp_path):
    # epochs of ~0.6 s: the kill lands in epoch 2, and a loaded machine that delays it by a
    # whole epoch still leaves the run two epochs short of its end
    common = [*tiny, "data.limit_batches=40", "trainer.max_epochs=4", "model.dropout=0.3",
              "schedule.after_epoch=1"]
    _, full_final, full_rows = train(common, tmp_path / "full")
    run_dir = tmp_path / "killed"
    proc = _start([*common, f"hydra.run.dir={run_dir}"])
    _wait_for_epoch(proc, run_dir)
    time.sleep(0.2)  # into epoch 2
    proc.kill()
    proc.wait()
    assert _final(run_dir)["status"] == "running"  # what a killed run honestly says
    _, final, rows = train([*common, "resume=true"], run_dir)
    assert final["status"] == "completed"
    assert strip_times(rows) == strip_times(full_rows)
    assert final["test"] == full_final["test"]


def test_reproduce_targets_never_delete_committed_results():
    p = subprocess.run(["make", "-n", "reproduce-grid", "reproduce-ptb", "reproduce-ptb-small",
                        "reproduce-speech", "reproduce-speech-synthetic"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    deletions = [line for line in p.stdout.splitlines() if "rm " in line and "results" in line]
    assert deletions == []
    assert "--replace" not in p.stdout  # a committed run of the same name is kept (refused)
    replace = subprocess.run(["make", "-n", "reproduce-ptb-small", "REPLACE=1"], cwd=REPO,
                             capture_output=True, text=True).stdout
    assert "collect_runs.py" in replace and "--replace" in replace  # only when asked


def test_weights_only_rejects_a_pickled_object(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(1, 1)}, path)  # a module, not a state dict
    with pytest.raises(CheckpointError, match="evil.pt"):
        checkpoint.load(path)


def test_a_signal_while_the_epoch_is_written_waits_for_the_records():
    signals, written = engine.StopSignals(), []
    with pytest.raises(engine.Interrupted, match="SIGTERM"):
        with signals.deferred():
            signals._on_signal(signal.SIGTERM, None)  # deferred: no half-written epoch
            written.append("the rest of the epoch's records")
    assert written  # the block ran to its end, then the signal was raised
    with pytest.raises(engine.Interrupted, match="SIGINT"):
        signals._on_signal(signal.SIGINT, None)  # outside the block: at once
    before = signal.getsignal(signal.SIGTERM)
    with engine.StopSignals():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
