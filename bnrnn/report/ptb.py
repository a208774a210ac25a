"""Penn Treebank word-level results: Laurent et al. Table 2, extended, and its Figure 2.

``build(runs_root, out_dir, command)`` reads the run directories under ``runs_root``
(``results/runs/ptb``) and writes ``ptb.md`` + ``ptb.csv`` (per size and variant: best train
and valid perplexity, test perplexity at the best validation epoch, epochs, wall time,
tokens/s, hardware, the published numbers beside ours) and ``ptb_curves.png`` + ``.pdf``
(train dotted and valid solid perplexity per epoch, one colour per variant, one panel per
size). Runs that completed the protocol are averaged over seeds; every other run (shortened,
interrupted, still running, diverged) gets a row of its own, marked.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from bnrnn.report.format import (DASH, curves_figure, duration, fmt, markdown_table, ordered,
                                 provenance, write_table)
from bnrnn.report.rows import Row as TableRow, group_rows as group_runs
from bnrnn.report.runs import Run, RunError, load_runs

# The published numbers, copied from ../shared/REFERENCE.md §3 (the papers are in shared/seeds/).
PAPER_NUMBERS = {
    # Laurent et al. 2016, "Batch Normalized Recurrent Neural Networks", Table 2: best perplexity
    # (train, valid) of the baseline LSTM and of input-only frame-wise BN (our `bn_input`).
    "laurent": {
        ("ptb_small", "none"): (78.5, 119.2),
        ("ptb_small", "bn_input"): (62.5, 120.9),
        ("ptb_medium", "none"): (49.1, 89.0),
        ("ptb_medium", "bn_input"): (41.0, 90.6),
        ("ptb_large", "none"): (49.3, 81.8),
        ("ptb_large", "bn_input"): (35.0, 97.4),
    },
    # Zaremba et al. 2014, "Recurrent Neural Network Regularization": (valid, test) perplexity of
    # the unnormalized LSTM (batch 20; Laurent et al. use 32).
    "zaremba": {
        "ptb_small": (120.7, 114.5),
        "ptb_medium": (86.2, 82.7),
        "ptb_large": (82.2, 78.4),
    },
    # TensorFlow's ptb_word_lm tutorial (Zaremba's configs, batch 20): (train, valid, test).
    "tensorflow": {
        "ptb_small": (37.99, 121.39, 115.91),
        "ptb_medium": (48.45, 86.16, 82.07),
        "ptb_large": (37.87, 82.62, 78.29),
    },
}

SIZES = ("ptb_small", "ptb_medium", "ptb_large")
VARIANTS = ("none", "bn_input", "bn_recurrent", "ln")
VARIANT_NAMES = {"none": "baseline", "bn_input": "BN input (Laurent)",
                 "bn_recurrent": "BN recurrent (Cooijmans)", "ln": "LayerNorm (Ba)"}
COLOURS = {"none": "#1f77b4", "bn_input": "#d62728", "bn_recurrent": "#2ca02c", "ln": "#9467bd"}
TARGET_PCT = 3.0  # issue 4: the small baseline's valid perplexity within ±3 % of the paper's

def _test_ppl(run: Run) -> float | None:
    return run.test.get("ppl")


VALUE = {
    "train": lambda r: r.best_of("train_ppl"),
    "valid": lambda r: r.best.get("valid_ppl"),
    "test": _test_ppl,
    "wall_time": lambda r: r.wall_time,
    "tokens_per_s": lambda r: r.mean_of("train_tokens_per_s"),
    "first_train": lambda r: next((m["train_ppl"] for m in r.metrics if m.get("epoch") == 1), None),
}


class Row(TableRow):
    """One line of the PTB table; its experiment name is the size."""

    variant_names = VARIANT_NAMES
    metrics = VALUE
    digits = 2

    @property
    def size(self) -> str:
        return self.name


def group_rows(runs: list[Run]) -> list[Row]:
    """Complete runs grouped by (size, variant, extra overrides); every other run on its own."""
    return group_runs(runs, Row, SIZES, VARIANTS)


def _diff(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return DASH
    return f"{ours - paper:+.1f} ({100 * (ours - paper) / paper:+.1f} %)"


def _seeds(row: Row) -> str:
    return ", ".join(str(r.seed) for r in row.runs)


ZAREMBA_BATCH = "data.batch_size=20"  # Zaremba et al.'s protocol differs from Laurent's by the batch


def _paper(row: Row) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(Laurent train/valid, Zaremba valid/test) for the rows run under their protocol: Laurent's
    (batch 32, no extra override) and Zaremba's (the baseline at batch 20)."""
    laurent = PAPER_NUMBERS["laurent"].get((row.size, row.norm)) if not row.extra else None
    zaremba = (PAPER_NUMBERS["zaremba"].get(row.size)
               if row.norm == "none" and row.extra == ZAREMBA_BATCH else None)
    return laurent, zaremba


def perplexity_table(rows: list[Row]) -> str:
    header = ["size", "variant", "status", "seeds", "epochs", "best train ppl", "best valid ppl",
              "test ppl at best valid", "Laurent train / valid", "Δ train / Δ valid vs Laurent",
              "Zaremba valid / test", "Δ valid / Δ test vs Zaremba"]
    body = []
    for row in rows:
        laurent, zaremba = _paper(row)
        train, valid, test = row.mean("train"), row.mean("valid"), row.mean("test")
        run = row.runs[0]
        body.append([
            row.size.removeprefix("ptb_"), row.variant, row.status, _seeds(row),
            f"{run.epochs_completed}/{run.protocol_epochs or '?'}",
            row.cell("train"), row.cell("valid"), row.cell("test"),
            f"{laurent[0]} / {laurent[1]}" if laurent else DASH,
            f"{_diff(train, laurent[0])} / {_diff(valid, laurent[1])}"
            if laurent and row.complete else DASH,
            f"{zaremba[0]} / {zaremba[1]}" if zaremba else DASH,
            f"{_diff(valid, zaremba[0])} / {_diff(test, zaremba[1])}"
            if zaremba and row.complete else DASH,
        ])
    return markdown_table(header, body)


def runs_table(rows: list[Row]) -> str:
    header = ["size", "variant", "status", "seeds", "epochs", "wall time", "per epoch",
              "full protocol (projected)", "train tokens/s", "hardware"]
    body = []
    for row in rows:
        run = row.runs[0]
        hardware = sorted({r.hardware or "unknown" for r in row.runs})
        wall, epochs = row.mean("wall_time"), run.epochs_completed
        per_epoch = wall / epochs if wall is not None and epochs else None
        projected = per_epoch * run.protocol_epochs if per_epoch and run.protocol_epochs else None
        body.append([row.size.removeprefix("ptb_"), row.variant, row.status, _seeds(row),
                     f"{epochs}/{run.protocol_epochs or '?'}",
                     duration(wall), duration(per_epoch), duration(projected),
                     fmt(row.mean("tokens_per_s"), 0), "; ".join(hardware)])
    return markdown_table(header, body)


def csv_rows(rows: list[Row]) -> list[dict]:
    out = []
    for row in rows:
        laurent, zaremba = _paper(row)
        run = row.runs[0]
        record = {"size": row.size, "norm": row.norm, "overrides": row.extra, "status": row.status,
                  "n_runs": len(row.runs), "seeds": " ".join(str(r.seed) for r in row.runs),
                  "epochs_completed": run.epochs_completed,
                  "protocol_epochs": run.protocol_epochs}
        for key in ("train", "valid", "test"):
            values = row.values(key)
            name = {"train": "best_train_ppl", "valid": "best_valid_ppl",
                    "test": "test_ppl_at_best_valid"}[key]
            record[f"{name}_mean"] = statistics.fmean(values) if values else None
            record[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        record |= {
            "laurent_train_ppl": laurent[0] if laurent else None,
            "laurent_valid_ppl": laurent[1] if laurent else None,
            "zaremba_valid_ppl": zaremba[0] if zaremba else None,
            "zaremba_test_ppl": zaremba[1] if zaremba else None,
        }
        for name, ours, paper in (("diff_train_vs_laurent", row.mean("train"), laurent and laurent[0]),
                                  ("diff_valid_vs_laurent", row.mean("valid"), laurent and laurent[1]),
                                  ("diff_valid_vs_zaremba", row.mean("valid"), zaremba and zaremba[0]),
                                  ("diff_test_vs_zaremba", row.mean("test"), zaremba and zaremba[1])):
            comparable = row.complete and ours is not None and paper is not None
            record[name] = ours - paper if comparable else None
        record |= {"wall_time_s_mean": row.mean("wall_time"),
                   "train_tokens_per_s_mean": row.mean("tokens_per_s"),
                   "hardware": "; ".join(sorted({r.hardware or "unknown" for r in row.runs}))}
        out.append(record)
    return out


# ---------------------------------------------------------------------- the findings paragraph
def _spread(row: Row, key: str) -> float:
    values = row.values(key)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _compare(base: Row, other: Row, key: str) -> str:
    """'lowers best train perplexity from 80.1 to 65.2 (-18.6 %)' with a noise caveat."""
    a, b = base.mean(key), other.mean(key)
    what = {"train": "best train perplexity", "valid": "best valid perplexity",
            "test": "test perplexity"}[key]
    verb = "lowers" if b < a else ("raises" if b > a else "leaves unchanged")
    text = f"{verb} {what} from {a:.1f} to {b:.1f} ({100 * (b - a) / a:+.1f} %)"
    noise = max(_spread(base, key), _spread(other, key))
    if noise and abs(b - a) <= noise:
        text += f", within the seed-to-seed spread ({noise:.1f})"
    return text


def findings(rows: list[Row]) -> str:
    """What the complete runs show, sentence by sentence, computed from the numbers."""
    complete = {(r.size, r.norm): r for r in rows if r.complete and not r.extra}
    sentences = []
    small = complete.get(("ptb_small", "none"))
    if small and small.mean("valid") is not None:
        paper = PAPER_NUMBERS["laurent"][("ptb_small", "none")][1]
        ours = small.mean("valid")
        pct = 100 * (ours - paper) / paper
        within = "within" if abs(pct) <= TARGET_PCT else "outside"
        sentences.append(f"The small baseline reaches a best valid perplexity of {ours:.1f}, "
                         f"{pct:+.1f} % from the paper's {paper} ({within} the ±{TARGET_PCT:.0f} % "
                         "target).")
        zaremba_row = next((r for r in rows if r.complete and r.size == "ptb_small"
                            and r.norm == "none" and r.extra == ZAREMBA_BATCH), None)
        if zaremba_row and zaremba_row.mean("valid") is not None:
            z_ours, z_paper = zaremba_row.mean("valid"), PAPER_NUMBERS["zaremba"]["ptb_small"][0]
            sentences.append(
                f"At Zaremba et al.'s batch of 20 the same code reaches {z_ours:.1f} against their "
                f"{z_paper} ({100 * (z_ours - z_paper) / z_paper:+.1f} %); Laurent et al.'s {paper} at "
                f"batch 32 is {'below' if paper < z_paper else 'above'} Zaremba's own batch-20 figure, "
                f"while our batch-32 run is {'above' if ours > z_ours else 'below'} our batch-20 run.")
        tf_train = PAPER_NUMBERS["tensorflow"]["ptb_small"][0]
        train = small.mean("train")
        if train is not None:
            sentences.append(
                f"Our best train perplexity ({train:.1f}) is the mean over a training epoch, as in "
                f"TensorFlow's ptb_word_lm tutorial ({tf_train} for the small model); Laurent et al.'s "
                f"train numbers ({PAPER_NUMBERS['laurent'][('ptb_small', 'none')][0]} small) are far "
                "above both and the paper does not say how they were measured, so the train "
                "columns compare directions, not values.")
    claims = []
    for size in SIZES:
        base = complete.get((size, "none"))
        if not base or base.mean("train") is None or base.mean("valid") is None:
            continue
        for norm in VARIANTS[1:]:
            other = complete.get((size, norm))
            if not other or other.mean("train") is None or other.mean("valid") is None:
                continue
            sentence = (f"{size.removeprefix('ptb_').capitalize()}: {VARIANT_NAMES[norm]} "
                        f"{_compare(base, other, 'train')} and {_compare(base, other, 'valid')}")
            if norm == "bn_input":
                lower_train = other.mean("train") < base.mean("train")
                better_valid = other.mean("valid") < base.mean("valid")
                agrees = lower_train and not better_valid
                sentence += (" — " + ("as the paper reports (BN fits the training set better "
                                      "without improving validation)" if agrees else
                                      "which is not the paper's pattern (lower train perplexity, "
                                      "valid not better)"))
            claims.append(sentence + ".")
    if claims:
        n_seeds = sorted({len(r.runs) for r in complete.values()})
        sentences += claims
        if n_seeds == [1]:
            sentences.append("Each complete row is a single seed, so differences of a few "
                             "perplexity points may be seed noise.")
    else:
        sentences.append("No size has complete runs of the baseline and a normalized variant "
                         "yet, so no comparison is drawn; the rows above are marked by status.")
    excluded = [r for r in rows if not r.complete]
    if excluded:
        sentences.append(f"{len(excluded)} run{'s are' if len(excluded) > 1 else ' is'} not a "
                         "complete protocol run (marked in the status column) and "
                         f"{'are' if len(excluded) > 1 else 'is'} left out of these comparisons.")
    return " ".join(sentences)


# ---------------------------------------------------------------------- the figure
def _short_status(row: Row) -> str:
    if row.complete:
        return ""
    status = row.runs[0].status
    return " ({})".format({"completed": "shortened"}.get(status, status))


def plot_curves(rows: list[Row], base: Path) -> list[Path]:
    """Figure 2 analogue: per size, train (dotted) and valid (solid) perplexity per epoch, one
    colour per variant; runs that are not complete protocol runs faint and labelled with their
    status. Several seeds: the mean curve over the epochs all reached."""
    sizes = sorted({r.size for r in rows}, key=lambda s: ordered(SIZES, s))
    panels = [(f"PTB {size.removeprefix('ptb_')}", [r for r in rows if r.size == size]) for size in sizes]
    return curves_figure(panels, ("train_ppl", "valid_ppl"), base=base,
                         colour=lambda row: COLOURS.get(row.norm, "#7f7f7f"),
                         label=lambda row: row.variant + _short_status(row),
                         ylabel="perplexity (train dotted, valid solid)",
                         log_subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))


# ---------------------------------------------------------------------- entry
def build(runs_root: Path, out_dir: Path, command: str) -> list[Path]:
    """Write ``out_dir/ptb.{md,csv}`` and ``out_dir/ptb_curves.{png,pdf}`` from ``runs_root``."""
    runs = load_runs(runs_root)
    if not runs:
        raise RunError(f"{runs_root}: no run directory (final.json) under it; copy runs in with "
                       "scripts/collect_runs.py")
    nameless = [str(r.path) for r in runs if r.name is None or r.norm is None]
    if nameless:
        raise RunError(f"run directories without name/norm in final.json or .hydra/config.yaml: "
                       f"{nameless}; these are not PTB word-LM runs")
    rows = group_rows(runs)
    out_dir = Path(out_dir)
    md = "\n".join([
        "# Penn Treebank word level: Laurent et al. Table 2, extended",
        "",
        "Best perplexity over epochs (train, valid), test perplexity at the best valid epoch; "
        "mean ± sample std over seeds for runs that completed the protocol "
        "(REFERENCE.md §3). Any other run has a row of its own, marked in the status column. "
        "Δ is ours minus the paper's, for complete runs only. Laurent et al. published the baseline and input-only BN "
        "(batch 32); Zaremba et al. the baseline (batch 20). No published word-level PTB number "
        "exists for recurrent BN or LayerNorm.",
        "",
        perplexity_table(rows),
        "## What our numbers show",
        "",
        findings(rows),
        "",
        "## Runs",
        "",
        runs_table(rows),
        "![Train (dotted) and valid (solid) perplexity per epoch](ptb_curves.png)",
        "",
        "## Provenance",
        "",
        provenance(runs, command),
    ])
    write_table(out_dir / "ptb", md, csv_rows(rows))
    figures = plot_curves(rows, out_dir / "ptb_curves")
    return [out_dir / "ptb.md", out_dir / "ptb.csv", *figures]
