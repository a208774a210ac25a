"""Laurent et al. appendix A: the random search with batch norm inside the recurrence (Table 3,
Figure 3), from the trial directories of ``make reproduce-grid``.

``build(runs_root, out_dir, command)`` reads the ``grid_char_rnn`` runs under ``runs_root``
(``results/runs/grid``) and writes

- ``grid.md`` + ``grid.csv``: the Table 3 analogue (per norm, the trial with the best validation
  cross-entropy: its train / valid CE at that epoch and its hyper-parameters, beside the paper's),
  the converged / diverged counts, the paired comparison (the two sweeps draw the same points),
  a "reduced run" statement when the protocol was cut (fewer than 52 trials or 20 epochs, a data
  subset, a smaller model), and every trial, one row per sampled point; the CSV has one row per
  trial;
- ``grid_lr.png``: best valid CE against the learning rate (log scale) for both norms, diverged
  trials as ``x`` at the top;
- ``grid_curves.png``: the Figure 3 analogue, train and valid CE per epoch of matched pairs (the
  same hyper-parameters for both norms) at the baseline's best point and at BN's best point.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bnrnn.report.format import (DASH, epoch_axis, figure, fmt, markdown_table, provenance,
                                 save_figure, write_table)
from bnrnn.report.runs import Run, RunError, load_runs, published_protocol
from bnrnn.report.table import Table, column

NAME = "grid_char_rnn"  # the experiment whose trials this family reads
NORMS = ("none", "bn_sum")
NORM_NAMES = {"none": "baseline", "bn_sum": "batch norm (eq. 17)"}
COLOURS = {"none": "#1f77b4", "bn_sum": "#d62728"}  # the paper's Figure 3: baseline blue, BN red

SOURCE = ("Laurent et al. 2016, *Batch Normalized Recurrent Neural Networks* (arXiv:1510.01378), "
          "appendix A: Table 3 and the text beside it")
# Table 3: best frame-wise cross-entropy (nats/char), train and valid, and the settings the
# appendix text gives for the best networks.
PAPER = {
    "none": {"train_ce": 1.05, "valid_ce": 1.10, "lr": 0.42, "momentum": 0.95, "batch_size": 32},
    "bn_sum": {"train_ce": 1.07, "valid_ce": 1.11, "lr": 3.71e-4, "momentum": 0.995, "batch_size": 128},
}
PAPER_FIGURE3 = {"lr": 7.8e-4, "momentum": 0.5, "batch_size": 64}  # "typical training curves"
# The protocol (docs/reference.md §4): anything below it is a reduced run.
PROTOCOL = {"trials": 52, "epochs": 20, "seq_len": 100, "embedding_size": 250, "hidden_size": 250,
            "num_layers": 3}


@dataclass
class Trial:
    run: Run
    norm: str
    lr: float
    momentum: float
    batch_size: int

    @property
    def point(self) -> tuple[float, float, int]:
        return (self.lr, self.momentum, self.batch_size)

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def converged(self) -> bool:
        return self.status == "completed" and self.valid_ce is not None

    @property
    def valid_ce(self) -> float | None:
        """The sweep objective: best validation CE (None unless the trial completed)."""
        value = self.run.best.get("valid_ce") if self.status == "completed" else None
        return value if value is not None and math.isfinite(value) else None

    @property
    def train_ce(self) -> float | None:
        """Train CE of the best-validation epoch (the running mean over that epoch)."""
        return self.run.best.get("train_ce") if self.converged else None


def _trial(run: Run) -> Trial:
    cfg = run.config
    try:
        lr, momentum = float(cfg["optim"]["lr"]), float(cfg["optim"]["momentum"])
        batch = int(cfg["data"]["batch_size"])
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{run.path}: .hydra/config.yaml has no optim.lr / optim.momentum / "
                       "data.batch_size; copy the run's .hydra/ folder with scripts/collect_runs.py") from None
    if run.norm not in NORMS:
        raise RunError(f"{run.path}: norm {run.norm!r} is not one of the grid's {', '.join(NORMS)}")
    return Trial(run, run.norm, lr, momentum, batch)


def load_trials(runs_root: Path) -> list[Trial]:
    runs = [r for r in load_runs(runs_root) if r.name == NAME]
    if not runs:
        raise RunError(f"{runs_root}: no {NAME} run directory under it; collect the sweep with "
                       f"scripts/collect_runs.py multirun/{NAME} --dest {runs_root} --layout relative")
    return [_trial(r) for r in runs]


def best_trial(trials: list[Trial]) -> Trial | None:
    converged = [t for t in trials if t.converged]
    return min(converged, key=lambda t: t.valid_ce) if converged else None


# ---------------------------------------------------------------------- reductions
def reductions(trials: list[Trial]) -> list[str]:
    """What this grid cut from the paper's protocol, in words (empty for the full protocol)."""
    out = []
    for norm in NORMS:
        n = sum(t.norm == norm for t in trials)
        if n < PROTOCOL["trials"]:
            out.append(f"{n} trials for {NORM_NAMES[norm]} (paper: {PROTOCOL['trials']})")
    epochs = sorted({int(t.run.final.get("max_epochs") or 0) for t in trials})
    if epochs and epochs[0] < PROTOCOL["epochs"]:
        out.append(f"{'/'.join(map(str, epochs))} epoch{'s' if epochs[-1] > 1 else ''} per trial "
                   f"(paper: {PROTOCOL['epochs']})")
    # a completed trial that stopped before its max_epochs (trainer.max_time) trained fewer
    # epochs than max_epochs says: its epochs count, not the number it was allowed
    cut = sorted(t.run.epochs_completed for t in trials if t.status == "completed"
                 and t.run.epochs_completed < int(t.run.final.get("max_epochs") or 0))
    if cut:
        out.append(f"{len(cut)} trial{'s' if len(cut) > 1 else ''} stopped early by the time box "
                   f"(trainer.max_time) after {'/'.join(map(str, sorted(set(cut))))} epochs")
    limits = sorted({t.run.final.get("limit_batches") for t in trials} - {None})
    if limits:
        out.append(f"data limited to the first {'/'.join(map(str, limits))} batches of each split "
                   f"per epoch (data.limit_batches)")
    for key, section in (("seq_len", "data"), ("embedding_size", "model"), ("hidden_size", "model"),
                         ("num_layers", "model")):
        values = sorted({(t.run.config.get(section) or {}).get(key) for t in trials} - {None})
        if values and values != [PROTOCOL[key]]:
            out.append(f"{section}.{key} = {'/'.join(map(str, values))} (paper: {PROTOCOL[key]})")
    return out


# ---------------------------------------------------------------------- tables
def _lr(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:.2e}" if abs(x) < 1e-2 else f"{x:.3g}"


def _ce(t: Trial | None) -> str:
    if t is None:
        return "no trial"
    if t.converged:
        return fmt(t.valid_ce, 3)
    return t.status + (f" (epoch {t.run.epochs_completed + 1})" if t.status == "diverged" else "")


def _table3(trials: list[Trial]) -> str:
    header = ["", "train CE", "valid CE", "lr", "momentum", "batch", "best epoch",
              "converged / diverged / other"]
    rows = []
    for norm in NORMS:
        mine = [t for t in trials if t.norm == norm]
        paper = PAPER[norm]
        rows.append([f"best {NORM_NAMES[norm]}, paper", fmt(paper["train_ce"]), fmt(paper["valid_ce"]),
                     _lr(paper["lr"]), f"{paper['momentum']:g}", str(paper["batch_size"]),
                     f"— of {PROTOCOL['epochs']}", f"{PROTOCOL['trials']} trials, counts not given"])
        best = best_trial(mine)
        conv = sum(t.converged for t in mine)
        div = sum(t.status == "diverged" for t in mine)
        counts = f"{conv} / {div} / {len(mine) - conv - div}"
        if best is None:
            rows.append([f"best {NORM_NAMES[norm]}, bnrnn", DASH, DASH, DASH, DASH, DASH, DASH, counts])
        else:
            rows.append([f"best {NORM_NAMES[norm]}, bnrnn", fmt(best.train_ce), fmt(best.valid_ce),
                         _lr(best.lr), f"{best.momentum:g}", str(best.batch_size),
                         f"{best.run.final.get('best_epoch')} of {best.run.epochs_completed}", counts])
    return markdown_table(header, rows)


class Pair(NamedTuple):
    """One sampled point and its trial of each norm (None: not run at that point)."""

    point: tuple[float, float, int]  # (lr, momentum, batch size)
    base: Trial | None
    bn: Trial | None


def paired(trials: list[Trial]) -> tuple[list[Pair], list[Trial]]:
    """(every sampled point's :class:`Pair`, sorted by lr; the trials without a partner)."""
    by_point: dict[tuple, dict[str, Trial]] = {}
    for t in trials:
        slot = by_point.setdefault(t.point, {})
        if t.norm in slot:
            raise RunError(f"{slot[t.norm].run.path} and {t.run.path} are both {t.norm} trials at "
                           f"lr={t.lr}, momentum={t.momentum}, batch={t.batch_size}: the same "
                           "sweep was collected twice; remove one copy")
        slot[t.norm] = t
    rows = [Pair(p, s.get("none"), s.get("bn_sum")) for p, s in sorted(by_point.items())]
    unmatched = [t for _, a, b in rows for t in (a, b) if t is not None and (a is None or b is None)]
    return rows, unmatched


def _paired_summary(rows: list[Pair]) -> list[str]:
    both = [(a, b) for _, a, b in rows if a is not None and b is not None]
    if not both:
        return ["- No point was run for both norms, so no paired comparison is possible."]
    conv = [(a, b) for a, b in both if a.converged and b.converged]
    diffs = [b.valid_ce - a.valid_ce for a, b in conv]
    bn_better = sum(d < 0 for d in diffs)
    lines = [f"- {len(both)} points were run for both norms (the same sampler seed draws the same "
             f"points). Both converged at {len(conv)}; there batch norm has the lower valid CE at "
             f"{bn_better} of {len(conv)}"
             + (f", median difference BN − baseline {statistics.median(diffs):+.3f} nats/char."
                if diffs else ".")]
    only_bn = sum(b.converged and not a.converged for a, b in both)
    only_base = sum(a.converged and not b.converged for a, b in both)
    neither = sum(not a.converged and not b.converged for a, b in both)
    lines.append(f"- Only batch norm converged at {only_bn} points, only the baseline at {only_base}, "
                 f"neither at {neither}. (Paper: BN is \"slightly worse than (or at best equivalent "
                 f"to)\" the baseline, except where the baseline diverges and BN still trains.)")
    return lines


def _bn_minus_baseline(pair: Pair) -> str:
    a, b = pair.base, pair.bn
    both = a is not None and b is not None and a.converged and b.converged
    return fmt(b.valid_ce - a.valid_ce, 3) if both else DASH


POINTS = Table((  # rows: paired()'s Pairs
    column("lr", lambda p: _lr(p.point[0])),
    column("momentum", lambda p: f"{p.point[1]:g}"),
    column("batch", lambda p: str(p.point[2])),
    column("baseline valid CE", lambda p: _ce(p.base)),
    column("BN valid CE", lambda p: _ce(p.bn)),
    column("BN − baseline", _bn_minus_baseline),
))


def trials_csv(root: Path) -> Table:
    """grid.csv: one record per trial (``run`` relative to ``root``)."""
    def where(t: Trial) -> str:
        return str(t.run.path.relative_to(root)) if t.run.path.is_relative_to(root) else str(t.run.path)

    return Table((column(
        None, norm=lambda t: t.norm, lr=lambda t: t.lr, momentum=lambda t: t.momentum,
        batch_size=lambda t: t.batch_size, status=lambda t: t.status,
        valid_ce=lambda t: t.valid_ce, train_ce=lambda t: t.train_ce,
        test_ce=lambda t: t.run.test.get("ce"), best_epoch=lambda t: t.run.final.get("best_epoch"),
        epochs_completed=lambda t: t.run.epochs_completed,
        max_epochs=lambda t: t.run.final.get("max_epochs"),
        last_valid_ce=lambda t: t.run.best.get("valid_ce") if not t.converged else None,
        wall_time_s=lambda t: t.run.wall_time, hardware=lambda t: t.run.hardware, run=where),))


def _timing(trials: list[Trial]) -> list[str]:
    lines = []
    for norm in NORMS:
        done = [t for t in trials if t.norm == norm and t.converged and t.run.wall_time]
        if done:
            per = statistics.fmean(t.run.wall_time for t in done)
            epochs = statistics.fmean(t.run.epochs_completed for t in done)
            hw = sorted({t.run.hardware or "unknown" for t in done})
            lines.append(f"- {NORM_NAMES[norm]}: {per:.3g} s of training per converged trial "
                         f"({per / epochs:.3g} s per epoch, evaluation included; {len(done)} trials) "
                         f"on {'; '.join(hw)}.")
    return lines


def _markdown(trials: list[Trial], rows: list[Pair], unmatched: list[Trial], command: str) -> str:
    reduced = reductions(trials)
    parts = ["# Appendix grid search: batch norm inside the recurrence (Laurent et al. Table 3)", ""]
    if reduced:
        parts += ["**Reduced run** — not the paper's protocol: " + "; ".join(reduced) + ". "
                  "The numbers below are not comparable with the paper's; the full grid is "
                  "`make reproduce-grid`.", ""]
    parts += ["Character-level PTB, sequences of 100, embedding 250 → 3 × tanh RNN 250 → softmax 50, "
              "SGD with momentum; random search over lr (log-uniform in [1e-4, 1]), momentum "
              "{0.5, 0.8, 0.9, 0.95, 0.995} and batch {32, 64, 128}. Batch norm is `bn_sum` "
              "(eq. 17: BN(W_h h + W_x x), statistics per time step, γ/β shared over time). "
              "Cross-entropy (CE) is frame-wise, in nats per character; the best trial of each norm "
              "is the one with the lowest validation CE, and its train CE is the running mean over "
              "that epoch's training batches.", "",
              _table3(trials), "",
              f"Paper numbers: {SOURCE}. A trial *diverged* when its loss became non-finite (kept, "
              "with status `diverged`; its Optuna objective is inf); *other* counts interrupted or "
              "unfinished trials.", "",
              "## Paired comparison", "", *_paired_summary(rows)]
    if unmatched:
        parts += [f"- {len(unmatched)} trials have no partner of the other norm (different "
                  "sampler seeds or an unfinished sweep); they count in the table above but not here."]
    parts += ["", "The Figure 3 analogue (`grid_curves.png`) shows matched pairs at the best point "
              "of each norm; the paper's Figure 3 shows one \"typical\" pair at lr "
              f"{_lr(PAPER_FIGURE3['lr'])}, momentum {PAPER_FIGURE3['momentum']}, batch "
              f"{PAPER_FIGURE3['batch_size']} (baseline blue, BN red, as here).",
              "", "## Every sampled point", "",
              "Sorted by learning rate; a diverged trial shows the epoch in which its loss became "
              "non-finite.", "", POINTS.markdown(rows), "", *_unstated(),
              "## Time per trial", "", *_timing(trials),
              "", "## Provenance", "", provenance([t.run for t in trials], command).rstrip("\n")]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------- figures
def plot_lr(trials: list[Trial], base: Path) -> list[Path]:
    """Best valid CE against lr (log x); diverged / unfinished trials as x at the top."""
    with figure(6.4, 4.4) as fig:
        ax = fig.subplots()
        finite = [t.valid_ce for t in trials if t.converged]
        top = (max(finite) + 0.1 * (max(finite) - min(finite) + 0.1)) if finite else 1.0
        for norm in NORMS:
            mine = sorted((t for t in trials if t.norm == norm), key=lambda t: t.point)
            ok = [t for t in mine if t.converged]
            bad = [t for t in mine if not t.converged]
            ax.scatter([t.lr for t in ok], [t.valid_ce for t in ok], s=[12 + t.batch_size / 4 for t in ok],
                       color=COLOURS[norm], alpha=0.75, label=f"{NORM_NAMES[norm]} ({len(ok)} converged)")
            if bad:
                ax.scatter([t.lr for t in bad], [top] * len(bad), marker="x", s=40, color=COLOURS[norm],
                           label=f"{NORM_NAMES[norm]}: {len(bad)} diverged / unfinished")
        for norm in NORMS:
            ax.axvline(PAPER[norm]["lr"], color=COLOURS[norm], linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (dotted: the paper's best per norm)")
        ax.set_ylabel("best valid cross-entropy (nats/char)")
        ax.set_title("Random search: validation CE vs learning rate (marker size: batch)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        return save_figure(fig, base, formats=("png",))


def plot_curves(trials: list[Trial], base: Path) -> list[Path]:
    """Train (dashed) and valid (solid) CE per epoch of matched pairs: at the baseline's best
    point and at batch norm's best point (one panel each; one panel if they coincide)."""
    by_point = {(t.norm, t.point): t for t in trials}
    points = []
    for norm in NORMS:
        best = best_trial([t for t in trials if t.norm == norm])
        if best is not None and best.point not in [p for _, p in points]:
            points.append((norm, best.point))
    with figure(5.0 * max(1, len(points)) + 0.4, 4.2) as fig:
        axes = fig.subplots(1, max(1, len(points)), squeeze=False)[0]
        if not points:
            axes[0].text(0.5, 0.5, "no trial converged", ha="center", va="center",
                         transform=axes[0].transAxes)
        for ax, (owner, point) in zip(axes, points):
            lr, momentum, batch = point
            for norm in NORMS:
                t = by_point.get((norm, point))
                if t is None:
                    continue
                label = NORM_NAMES[norm] + ("" if t.converged else f" ({t.status})")
                for key, style in (("train_ce", "--"), ("valid_ce", "-")):
                    epochs, values = t.run.curve(key)
                    if epochs:
                        ax.plot(epochs, values, linestyle=style, marker="o", markersize=2.5,
                                color=COLOURS[norm], label=f"{label}, {key.split('_')[0]}")
            ax.set_title(f"best {NORM_NAMES[owner]} point: lr {lr:.3g}, momentum {momentum:g}, "
                         f"batch {batch}", fontsize=9)
            epoch_axis(ax)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("cross-entropy (nats/char)")
        fig.tight_layout()
        return save_figure(fig, base, formats=("png",))


# ---------------------------------------------------------------------- entry
UNSTATED = Table((column("setting", lambda u: u["setting"]), column("bnrnn's value", lambda u: u["value"]),
                  column("why", lambda u: u["why"])))


def _unstated() -> list[str]:
    """What the appendix leaves open and what bnrnn chose, from the experiment's published
    protocol (configs/paper/grid.yaml, as configured now)."""
    paper = published_protocol("grid_char_rnn") or {}
    if not paper.get("unstated"):
        return []
    return ["## What the appendix does not state", "",
            f"{paper['source']} states the data, model, optimizer family, epochs and search space "
            "(docs/reference.md §4); every other setting is bnrnn's, the same for both norms "
            "(`configs/paper/grid.yaml`):", "", UNSTATED.markdown(paper["unstated"]), ""]


def build(runs_root: Path, out_dir: Path, command: str) -> list[Path]:
    """Write ``grid.md``/``grid.csv``, ``grid_lr.png`` and ``grid_curves.png`` into ``out_dir``."""
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    trials = load_trials(runs_root)
    rows, unmatched = paired(trials)
    base = out_dir / "grid"
    write_table(base, _markdown(trials, rows, unmatched, command), trials_csv(runs_root).records(
        sorted(trials, key=lambda t: (NORMS.index(t.norm), t.point, str(t.run.path)))))
    written = [base.with_suffix(".md"), base.with_suffix(".csv")]
    written += plot_lr(trials, out_dir / "grid_lr")
    written += plot_curves(trials, out_dir / "grid_curves")
    return written
