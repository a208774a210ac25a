"""A run directory belongs to one run: claimed with a lock, never overwritten, resumed only
with the configuration it was started with.

- :func:`claim` takes ``<run dir>/.lock`` (an ``flock``, released by the kernel when the process
  dies, even by ``kill -9``) and refuses a directory that already holds a run unless the run is
  being resumed; it returns the checkpoint to resume from.
- A resumed run must have the configuration its checkpoint recorded, except the keys of
  :data:`MAY_CHANGE_ON_RESUME` (how long to train, where the data lies, how to log).
- :func:`write_hydra_files` writes ``.hydra/`` (Hydra's own writing is switched off in
  ``configs/config.yaml``, because Hydra would overwrite a finished run's record before any of
  our code could refuse).
"""
from __future__ import annotations

import copy
import fcntl
import json
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnrnn import checkpoint
from bnrnn.io import not_a_directory, write_text

# Keys (or key prefixes ending in ".") that say how long or where a run trains, not what it
# computes: a resumed run may change them.
MAY_CHANGE_ON_RESUME = (
    "trainer.max_epochs", "trainer.max_time", "trainer.stop_after_epochs", "trainer.progress",
    "trainer.check_every", "resume", "quiet", "threads", "device", "logger.", "paths.", "data.root",
    "data.cache_dir", "data.text_cache_dir", "data.audio_dir", "data.download", "data.progress",
    "data.workers")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message says what to do instead."""


def holds_run(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in ("final.json", "metrics.jsonl", "checkpoints/last.pt"))


def record(run_dir: Path) -> dict | None:
    """The run's ``final.json``, or None where there is none that reads."""
    try:
        final = json.loads((Path(run_dir) / "final.json").read_text())
    except (OSError, ValueError):
        return None
    return final if isinstance(final, dict) else None


def _status(run_dir: Path) -> str:
    final = record(run_dir)
    if final is None:
        return "no readable final.json"
    return f"status {final.get('status')}, {final.get('epochs_completed')} epoch(s)"


# ------------------------------------------------------------------ what a resumed run records
def defining(overrides: list[str]) -> list[str]:
    """The overrides that define a run: all but ``resume`` (how one invocation continues it, not
    what the run is). Recorded as its command, they train the same run in a new directory."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]


def as_recorded(cfg):
    """``cfg`` as the run's ``.hydra/config.yaml`` keeps it: ``resume`` false (see :func:`defining`)."""
    if not cfg.get("resume"):
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.resume = False
    return cfg


def continued(info: dict, run_dir: Path, epoch: int) -> dict:
    """The record ``info`` of an invocation that resumes the run in ``run_dir`` at ``epoch``, as
    the run's own: the start and code revision of its first segment (from its ``final.json``;
    null where that is lost) and, in ``resumed``, one entry per continuation — when, from which
    epoch, with which revision."""
    previous = record(run_dir) or {}
    entry = {"at": info.get("started"), "epoch": epoch, "git_revision": info.get("git_revision")}
    return {**info, "started": previous.get("started"), "git_revision": previous.get("git_revision"),
            "resumed": [*previous.get("resumed", []), entry]}


def nothing_to_resume(run_dir: Path, resume_state: dict, max_epochs: int,
                      statuses=("completed",)) -> dict | None:
    """The ``final.json`` of a run that ``resume=true`` would leave as it is: its checkpoint
    already at ``max_epochs`` and its record in one of ``statuses``; else None."""
    final = record(run_dir)
    if final is None or resume_state.get("epoch", 0) < max_epochs or final.get("status") not in statuses:
        return None
    return final


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.lock`` for the lifetime of the run."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 64).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunDirError(f"{run_dir} is in use by another training process (pid {holder}); "
                              "wait for it, or choose another hydra.run.dir") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def claim(run_dir: str | Path, resume: bool, config: dict, device="cpu") -> tuple[RunLock, dict | None]:
    """Lock ``run_dir`` for this process and check it may be used; returns the lock and, when
    resuming, the checkpoint state (``checkpoints/last.pt``). Raises :class:`RunDirError` (after
    releasing the lock) when the directory holds a run and ``resume`` is off, when ``resume`` is
    on and there is no checkpoint, or when the checkpoint's configuration differs from
    ``config`` (the resolved configuration of this invocation) outside MAY_CHANGE_ON_RESUME."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    try:
        last = run_dir / "checkpoints" / "last.pt"
        if not resume:
            if holds_run(run_dir):
                raise RunDirError(
                    f"{run_dir} already holds a run ({_status(run_dir)}); to continue it pass "
                    "resume=true (same configuration; only how long and where it trains may "
                    "change), or choose another hydra.run.dir for a new run")
            return lock, None
        if not last.is_file():
            raise RunDirError(
                f"resume=true, but there is no checkpoint {last} to resume from"
                + (f" (the run there has {_status(run_dir)})" if holds_run(run_dir) else
                   " (the directory holds no run)")
                + "; drop resume=true and choose a new hydra.run.dir")
        state = checkpoint.load(last, device)
        changes = config_changes(state.get("config") or {}, config)
        if changes:
            raise RunDirError(
                f"resume=true, but the configuration differs from the one {run_dir} was trained "
                f"with: {'; '.join(changes)}. Only {', '.join(MAY_CHANGE_ON_RESUME)} may change "
                "on resume; start a new run in another hydra.run.dir for the others")
        return lock, state
    except BaseException:
        lock.release()
        raise


def _flatten(d, prefix="") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_changes(saved: dict, new: dict) -> list[str]:
    """'key: old -> new' for every resolved key that differs, except MAY_CHANGE_ON_RESUME."""
    a, b = _flatten(saved), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "" or any(key == m or (m.endswith(".") and key.startswith(m))
                            for m in MAY_CHANGE_ON_RESUME):
            continue
        old, cur = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old != cur:
            out.append(f"{key}: {old!r} -> {cur!r}")
    return out


def write_hydra_files(run_dir: str | Path, cfg, overrides: list[str], hydra_cfg=None) -> None:
    """``.hydra/config.yaml`` (the composed task config), ``overrides.yaml`` and, under Hydra,
    ``hydra.yaml``, as Hydra itself would write them."""
    d = Path(run_dir) / ".hydra"
    write_text(d / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if hydra_cfg is not None:
        write_text(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))


class RunDirCheck(Callback):
    """hydra.callbacks (configs/config.yaml): a run or sweep directory that cannot be one (it,
    or a folder above it, is a file) is refused in one line, exit 2. Hydra creates the
    directory before the task starts, and would fail there with a traceback."""

    @staticmethod
    def _check(key: str, value) -> None:
        blocking = not_a_directory(Path(str(value)).expanduser())
        if blocking is not None:
            what = "is a file" if blocking == Path(str(value)).expanduser() else f"lies under the file {blocking}"
            print(f"bnrnn: {key}={value}: {what}, not a directory; choose another {key}",
                  file=sys.stderr)
            raise SystemExit(2)  # Hydra passes SystemExit on (its callbacks warn on Exception)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)
