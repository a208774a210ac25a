"""Run directories, read back: the only input of every table and figure in ``results/``.

A run directory is what :class:`bnrnn.engine.Trainer` writes (or what
``scripts/collect_runs.py`` copies of it): ``final.json`` (status, best epoch, test at best
validation, hardware, ...), ``metrics.jsonl`` (one row per epoch) and ``.hydra/config.yaml``
(the composed config; ``.hydra/overrides.yaml`` the command-line overrides).
"""
from __future__ import annotations

import functools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf


# Overrides that say how or where a run was made, not what it measures: they never split a table
# row nor name a directory of results/runs (scripts/collect_runs.py).
MECHANICS = frozenset({
    "experiment", "name", "model.norm", "seed", "sweep", "device", "quiet", "threads", "resume",
    "logger", "data.root", "data.audio_dir", "data.download", "data.cache_dir", "data.text_cache_dir",
    "data.workers", "data.progress", "trainer.progress", "trainer.check_every", "trainer.max_time",
    "paths.cache_dir"})
# Overrides whose effect a run's status marks (shortened, data-limited): they do not split a row.
STATUS_MARKED = frozenset({"trainer.max_epochs", "trainer.stop_after_epochs", "data.limit_batches"})


def extra_overrides(run: "Run", neutral: frozenset[str] = MECHANICS | STATUS_MARKED) -> list[str]:
    """The run's command-line overrides that change what it measures (e.g. data.batch_size=20),
    sorted, without Hydra's own (hydra.*, hydra/...) and logger settings."""
    kept = []
    for o in run.overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key in neutral or key.startswith(("hydra.", "hydra/", "logger.")):
            continue
        kept.append(o.lstrip("+~"))
    return sorted(kept)


def status_mark(run: "Run") -> str:
    """A short mark for a run that is not a complete protocol run, e.g. 'shortened: 26/40 epochs'."""
    epochs = f"{run.epochs_completed}/{run.protocol_epochs or '?'} epochs"
    limited = run.final.get("limit_batches")
    data = f", data limited to {limited} batches" if limited else ""
    how = {"diverged": "diverged after", "interrupted": "interrupted at",
           "running": "running or killed at", "completed": "shortened:"}.get(run.status, f"{run.status} at")
    return f"{how} {epochs}{data}"


def mean_curve(runs: list["Run"], key: str) -> tuple[list[int], list[float]]:
    """The mean of ``key`` over runs at each epoch that every run reached (one run: its curve)."""
    curves = [dict(zip(*r.curve(key))) for r in runs]
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return common, [statistics.fmean(c[e] for c in curves) for e in common]


class RunError(ValueError):
    """A run directory that cannot be read: names the file and what to do about it."""


@dataclass
class Run:
    path: Path
    config: dict  # .hydra/config.yaml, interpolations resolved where they can be ({} if absent)
    final: dict  # final.json
    metrics: list[dict]  # metrics.jsonl rows, one per epoch
    overrides: list[str] = field(default_factory=list)  # .hydra/overrides.yaml (or final.json's)

    # -------------------------------------------------------------- identity
    @property
    def name(self) -> str | None:
        """The experiment name (``ptb_small``, ...): final.json's, else the config's."""
        return self.final.get("name", self.config.get("name"))

    @property
    def norm(self) -> str | None:
        """The normalization variant (``none``, ``bn_input``, ...)."""
        if self.final.get("norm") is not None:
            return self.final["norm"]
        return (self.config.get("model") or {}).get("norm")

    @property
    def seed(self) -> int | None:
        return self.final.get("seed", self.config.get("seed"))

    # -------------------------------------------------------------- status
    @property
    def status(self) -> str:
        """``completed``, ``diverged``, ``interrupted`` or ``running`` (the engine's words)."""
        return self.final.get("status", "unknown")

    @property
    def shortened(self) -> bool:
        """Fewer epochs than the paper's protocol, or a data subset (``limit_batches``)."""
        if "shortened" in self.final:
            return bool(self.final["shortened"])
        return self.epochs_completed < (self.protocol_epochs or 0)

    @property
    def epochs_completed(self) -> int:
        return int(self.final.get("epochs_completed", len(self.metrics)))

    @property
    def protocol_epochs(self) -> int | None:
        value = self.final.get("protocol_epochs", self.final.get("max_epochs"))
        return None if value is None else int(value)

    @property
    def complete(self) -> bool:
        """Completed the full protocol: the only runs a table may average without a mark."""
        return self.status == "completed" and not self.shortened

    @property
    def deviations(self) -> list[str]:
        """How the run departs from its experiment's published protocol (``configs/paper/``):
        final.json's list; for a run recorded before runs listed them, computed from its own
        configuration against the experiment's protocol values as configured now."""
        if "deviations" in self.final:
            return list(self.final["deviations"])
        paper = published_protocol(self.name)
        if not paper or not self.config:
            return []
        from bnrnn.config import deviations

        return deviations({**self.config, "paper": paper})

    @property
    def substitutes(self) -> list[str]:
        """What the run stands in with that no value can say (a substitute corpus)."""
        if "substitutes" in self.final:
            return list(self.final["substitutes"])
        return list((published_protocol(self.name) or {}).get("substitutes") or [])

    @property
    def scaled(self) -> bool:
        """Run at other values than its published protocol's (model size, lr, corpus size...)."""
        return bool(self.deviations)

    # -------------------------------------------------------------- numbers
    @property
    def best(self) -> dict:
        """The metrics row of the best-validation epoch ({} if no epoch finished)."""
        return self.final.get("best") or {}

    @property
    def test(self) -> dict:
        """Test metrics at the best-validation weights ({} unless the run completed)."""
        return self.final.get("test") or {}

    @property
    def wall_time(self) -> float | None:
        return self.final.get("wall_time")

    @property
    def hardware(self) -> str | None:
        return self.final.get("hardware")

    def best_of(self, key: str) -> float | None:
        """The lowest finite value of ``key`` over all epochs (e.g. best train perplexity)."""
        values = [r[key] for r in self.metrics if isinstance(r.get(key), (int, float))
                  and math.isfinite(r[key])]
        return min(values) if values else None

    def mean_of(self, key: str) -> float | None:
        """The mean of ``key`` over all epochs (e.g. train tokens per second)."""
        values = [r[key] for r in self.metrics if isinstance(r.get(key), (int, float))
                  and math.isfinite(r[key])]
        return sum(values) / len(values) if values else None

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of ``key`` for the plots; epochs without the key are skipped."""
        rows = [r for r in self.metrics if r.get(key) is not None]
        return [int(r["epoch"]) for r in rows], [float(r[key]) for r in rows]


@functools.cache
def published_protocol(experiment: str | None) -> dict | None:
    """The ``paper:`` block of ``experiment=<experiment>`` as the configs give it now (None for
    an experiment without one, or one that no longer exists)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from bnrnn.config import CONFIG_DIR

    if not experiment or not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        return None
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    except HydraException:
        return None
    paper = cfg.get("paper")
    return None if paper is None else OmegaConf.to_container(paper, resolve=True)


def load_run(path: str | Path) -> Run:
    """Read one run directory (must hold ``final.json``)."""
    path = Path(path)
    final = _read_json(path / "final.json")
    metrics = _read_metrics(path / "metrics.jsonl")
    config = _read_config(path / ".hydra" / "config.yaml")
    overrides_file = path / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        overrides = [str(o) for o in (_read_yaml(overrides_file) or [])]
    else:
        overrides = [str(o) for o in final.get("overrides") or []]
    return Run(path=path, config=config, final=final, metrics=metrics, overrides=overrides)


def load_runs(root: str | Path) -> list[Run]:
    """Every directory under ``root`` (``root`` included) holding ``final.json``, sorted by path.

    A directory with ``final.json`` whose ``metrics.jsonl``, ``final.json`` or
    ``.hydra/config.yaml`` cannot be parsed raises :class:`RunError` naming the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"load_runs: {root} is not a directory; point it at a folder of run "
                       "directories (e.g. results/runs/ptb or multirun/)")
    dirs = sorted({p.parent for p in root.rglob("final.json")
                   if "checkpoints" not in p.relative_to(root).parts})
    return [load_run(d) for d in dirs]


def load_family(root: str | Path, expected: str, accept: Callable[[Run], bool]) -> list[Run]:
    """:func:`load_runs` for one family's report: a :class:`RunError` if ``root`` holds no run,
    or holds runs that ``accept`` refuses (named, as not ``expected``)."""
    runs = load_runs(root)
    if not runs:
        raise RunError(f"{root}: no run directory (final.json) under it; copy runs in with "
                       "scripts/collect_runs.py")
    foreign = [str(r.path) for r in runs if not accept(r)]
    if foreign:
        raise RunError(f"not {expected}: {foreign}")
    return runs

# ---------------------------------------------------------------------- readers
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} not found: not a run directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path} is not valid JSON ({e}); re-copy it from the run directory "
                       "or delete that run directory") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a run that ended in its first epoch has none (the file is absent)."""
    if not path.exists():
        return []
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"{path} cannot be read ({e}); re-copy it from the run directory or "
                       "delete that run directory") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunError(f"{path}, line {number}: not valid JSON ({e.msg}); re-copy it from "
                           "the run directory or delete that run directory") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise RunError(f"{path}, line {number}: expected a JSON object with an 'epoch' key "
                           "(one row per epoch, as bnrnn.engine writes)")
        rows.append(row)
    return rows


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:  # yaml.YAMLError and OmegaConf's own errors have no common base
        raise RunError(f"{path} is not valid YAML ({type(e).__name__}: {e}); re-copy it from "
                       "the run directory") from None


def _read_config(path: Path) -> dict:
    """The composed config with every interpolation that can be resolved from the file alone.

    Hydra stores the config unresolved. Interpolations into other keys are resolved;
    ``${oc.env:...}`` and ``${hydra:...}`` are kept as written, so that a config read back
    never depends on the environment of the machine that reads it.
    """
    if not path.is_file():
        return {}
    _read_yaml(path)  # a clear error for a broken file
    cfg = OmegaConf.load(path)
    if not OmegaConf.is_dict(cfg):
        raise RunError(f"{path} must hold a mapping (Hydra's composed config)")
    return resolve_portably(cfg)


def resolve_portably(node) -> Any:
    """An OmegaConf node as plain data, interpolations into other keys resolved and
    ``${oc.env:...}``, ``${hydra:...}``, ``${now:...}`` kept as written (the reading machine's
    environment never enters a report)."""
    if OmegaConf.is_dict(node):
        out = {}
        for key in node.keys():
            out[str(key)] = _resolve_child(node, key)
        return out
    if OmegaConf.is_list(node):
        return [_resolve_child(node, i) for i in range(len(node))]
    return node


def _resolve_child(parent, key) -> Any:
    raw = parent._get_node(key)._value()  # the string as written, for interpolations
    if isinstance(raw, str) and ("${oc.env" in raw or "${hydra:" in raw or "${now:" in raw):
        return raw
    try:
        value = parent[key]
    except Exception:  # an interpolation that cannot be resolved outside its Hydra job
        return raw
    if OmegaConf.is_config(value):
        return resolve_portably(value)
    return value
