"""Framewise speech alignment results: Laurent et al. Table 1 and Figure 1 analogues.

``build(runs_root, out_dir, command)`` reads the run directories under ``runs_root``
(``results/runs/speech``: runs of ``experiment=speech_synthetic`` and/or
``speech_librispeech``) and writes

- ``speech.md`` + ``speech.csv``: per corpus and variant, the best (lowest over epochs) train
  and dev frame cross-entropy (FCE, nats) and frame error rate (FER), as in Table 1, the test
  FCE/FER at the best-dev epoch, epochs, time per epoch, and the paper's WSJ numbers beside
  them (a different corpus and label set: compare the baseline-vs-BN pattern, not the values);
- ``speech_curves.png`` + ``.pdf``: Figure 1's layout, FCE per epoch, train dotted and dev
  solid, baseline blue and BN red, one panel per corpus.

Runs that completed their protocol are averaged over seeds; every other run (shortened,
interrupted, still running, diverged) gets a row of its own, marked in the status column.
Train FCE/FER are the running averages over each training epoch (training mode, as the
engine logs them), the usual reading of a training curve.
"""
from __future__ import annotations

from pathlib import Path

from bnrnn.report import table
from bnrnn.report.format import DASH, curves_figure, duration, ordered, provenance, write_table
from bnrnn.report.runs import Run, load_family, mean_curve
from bnrnn.report.table import (EPOCHS, HARDWARE, SEEDS, STATUS, VARIANT, Table, column, joined,
                                metric, shown)

# Laurent et al. 2016, "Batch Normalized Recurrent Neural Networks", Table 1 (WSJ si284 /
# dev93, 3546 tied triphone states; docs/reference.md §5): best (FCE, FER) on train and dev.
PAPER_TABLE1 = {
    "none": {"train": (0.95, 0.28), "dev": (1.11, 0.33)},
    "bn_input": {"train": (0.73, 0.22), "dev": (1.19, 0.34)},
}
PAPER_SOURCE = "Laurent et al. 2016, Table 1 (WSJ si284 train / dev93, 3546 triphone states)"

CORPORA = {  # experiment name -> what it is
    "speech_synthetic": "synthetic eSpeak corpus (75 phoneme classes)",
    "speech_librispeech": "LibriSpeech train-clean-100, CPC labels (41 phone classes)",
}
VARIANTS = ("none", "bn_input")
VARIANT_NAMES = {"none": "baseline", "bn_input": "BN, sequence-wise"}
COLOURS = {"none": "#1f77b4", "bn_input": "#d62728"}  # Figure 1: baseline blue, BN red

METRICS = {  # metric key -> how to read it from a run
    "train_fce": lambda r: r.best_of("train_fce"),
    "train_fer": lambda r: r.best_of("train_fer"),
    "dev_fce": lambda r: r.best_of("dev_fce"),
    "dev_fer": lambda r: r.best_of("dev_fer"),
    "test_fce": lambda r: r.test.get("fce"),
    "test_fer": lambda r: r.test.get("fer"),
    "epoch_time": lambda r: r.mean_of("epoch_time"),
    "wall_time": lambda r: r.wall_time,
}


class Row(table.Row):
    """One line of the speech table: the runs of one (corpus, variant, overrides)."""

    variant_names = VARIANT_NAMES
    metrics = METRICS
    digits = 3


def group_rows(runs: list[Run]) -> list[Row]:
    return table.group_rows(runs, Row, tuple(CORPORA), VARIANTS)


def _model(row: Row) -> str:
    model = row.runs[0].config.get("model") or {}
    if "num_layers" not in model:
        return DASH
    return f"{model['num_layers']} x BiLSTM {model.get('hidden_size', '?')}"


def _paper(split: str, i: int):
    """The paper's Table 1 (FCE, FER)[i] on ``split`` for the row's variant (none with overrides)."""
    return lambda r: PAPER_TABLE1[r.norm][split][i] if r.norm in PAPER_TABLE1 and not r.extra else None


def _published(split: str) -> table.Column:
    return joined(f"paper {split} FCE / FER", shown(None, f"paper_{split}_fce", _paper(split, 0)),
                  shown(None, f"paper_{split}_fer", _paper(split, 1)),
                  when=lambda r: _paper(split, 0)(r) is not None)


CORPUS = shown("corpus", "experiment", lambda r: r.name, lambda n: n.removeprefix("speech_"))

TABLE1 = Table((
    CORPUS, column("model", _model), VARIANT, STATUS, SEEDS, EPOCHS,
    metric("train FCE", "train_fce"), metric("train FER", "train_fer"),
    metric("dev FCE", "dev_fce"), metric("dev FER", "dev_fer"),
    joined("test FCE / FER at best dev", metric(None, "test_fce"), metric(None, "test_fer")),
    metric(None, "epoch_time"), metric(None, "wall_time"),
    _published("train"), _published("dev"),
))


def _parameters(row: Row) -> str:
    params = sorted({r.final.get("num_parameters") for r in row.runs} - {None})
    return ", ".join(f"{p:,}" for p in params) or DASH


RUNS = Table((
    CORPUS, VARIANT, STATUS,
    column("time per epoch", lambda r: duration(r.mean("epoch_time"))),
    column("wall time", lambda r: duration(r.mean("wall_time"))),
    column("parameters", _parameters),
    HARDWARE,
))

CSV = TABLE1 + RUNS  # speech.csv: one record per row


def findings(rows: list[Row]) -> str:
    """What the complete baseline/BN pairs show, checked against the paper's findings."""
    complete = {(r.name, r.norm): r for r in rows if r.complete and not r.extra}
    sentences = []
    for name in sorted({r.name for r in rows}, key=lambda n: ordered(CORPORA, n)):
        base, bn = complete.get((name, "none")), complete.get((name, "bn_input"))
        if not base or not bn or None in (base.mean("train_fce"), bn.mean("train_fce"),
                                          base.mean("dev_fce"), bn.mean("dev_fce")):
            continue
        corpus = name.removeprefix("speech_")
        tb, tn = base.mean("train_fce"), bn.mean("train_fce")
        db, dn = base.mean("dev_fce"), bn.mean("dev_fce")
        gap_b, gap_n = db - tb, dn - tn
        sentences.append(
            f"{corpus}: sequence-wise BN {'lowers' if tn < tb else 'raises'} the best train FCE "
            f"from {tb:.3f} to {tn:.3f} ({100 * (tn - tb) / tb:+.0f} %) and "
            f"{'lowers' if dn < db else 'raises'} the best dev FCE from {db:.3f} to {dn:.3f} "
            f"({100 * (dn - db) / db:+.0f} %); the dev-minus-train gap is {gap_b:.3f} for the "
            f"baseline and {gap_n:.3f} with BN.")
        epochs = _epochs_to_reach(base, bn)
        if epochs:
            sentences.append(epochs)
        paper_b, paper_n = PAPER_TABLE1["none"]["dev"][0], PAPER_TABLE1["bn_input"]["dev"][0]
        claims = [
            ("faster training (lower best train FCE)", tn < tb),
            ("more overfitting (a wider dev-minus-train gap)", gap_n > gap_b),
            (f"no dev improvement (paper: BN {paper_n} vs baseline {paper_b})", dn >= db),
        ]
        agree = [c for c, ok in claims if ok]
        differ = [c for c, ok in claims if not ok]
        scaled = any(run.scaled for run in base.runs + bn.runs)
        text = ("On these scaled runs (not the paper's protocol), against the paper's findings: "
                if scaled else "Against the paper's findings: ")
        text += ("reproduced: " + "; ".join(agree)) if agree else "none reproduced"
        text += (". Not reproduced: " + "; ".join(differ) + ".") if differ else "."
        sentences.append(text)
        if {len(base.runs), len(bn.runs)} == {1}:
            sentences.append("Each row is a single seed; small differences may be seed noise.")
    if not sentences:
        sentences.append("No corpus has complete runs of both the baseline and BN yet, so no "
                         "comparison is drawn; the rows above are marked by status.")
    excluded = [r for r in rows if not r.complete]
    if excluded:
        sentences.append(f"{len(excluded)} run(s) did not complete the protocol (see status) and "
                         "are left out of these comparisons.")
    return " ".join(sentences)


def _epochs_to_reach(base: Row, bn: Row) -> str | None:
    """'BN reaches the baseline's final train FCE (x) at epoch k of n' — the paper's "faster"."""
    b_epochs, b_values = mean_curve(base.runs, "train_fce")
    n_epochs, n_values = mean_curve(bn.runs, "train_fce")
    if not b_values or not n_values:
        return None
    target = b_values[-1]
    reached = next((e for e, v in zip(n_epochs, n_values) if v <= target), None)
    if reached is None:
        return (f"BN does not reach the baseline's final train FCE ({target:.3f}, epoch "
                f"{b_epochs[-1]}) within its {n_epochs[-1]} epochs.")
    return (f"BN reaches the baseline's final train FCE ({target:.3f}, epoch {b_epochs[-1]}) at "
            f"epoch {reached}.")


def plot_curves(rows: list[Row], base: Path) -> list[Path]:
    """Figure 1 analogue: FCE per epoch, train dotted and dev solid, baseline blue, BN red;
    log scale: late epochs differ by hundredths of a nat."""
    names = sorted({r.name for r in rows}, key=lambda n: ordered(CORPORA, n))
    panels = [(CORPORA.get(name, name), [r for r in rows if r.name == name]) for name in names]
    return curves_figure(panels, ("train_fce", "dev_fce"), base=base, panel_width=5.0, height=4.4,
                         colour=lambda row: COLOURS.get(row.norm, "#7f7f7f"),
                         ylabel="frame cross-entropy, nats (train dotted, dev solid)")


def build(runs_root: Path, out_dir: Path, command: str) -> list[Path]:
    """Write ``out_dir/speech.{md,csv}`` and ``out_dir/speech_curves.{png,pdf}``."""
    runs = load_family(runs_root, f"speech runs (name must be one of {sorted(CORPORA)}, with a "
                       "norm)", lambda r: r.name in CORPORA and r.norm is not None)
    rows = group_rows(runs)
    out_dir = Path(out_dir)
    corpora = [f"- `{n}`: {CORPORA[n]}." for n in sorted({r.name for r in rows},
                                                        key=lambda n: ordered(CORPORA, n))]
    md = "\n".join([
        "# Framewise speech alignment: Laurent et al. Table 1 and Figure 1 analogues",
        "",
        "Best frame cross-entropy (FCE, nats per frame) and frame error rate (FER) over epochs on "
        "the training and development sets, as in the paper's Table 1; test FCE / FER with the "
        "weights of the best dev-FCE epoch. Complete runs: mean ± sample std over seeds; any "
        "other run has a row of its own, marked in the status column. Train numbers are the "
        "running averages of each training epoch (training mode).",
        "",
        *corpora,
        f"- Paper columns: {PAPER_SOURCE}. That corpus and label set differ from ours (WSJ is "
        "LDC-licensed, docs/reference.md §5), so compare the baseline-vs-BN pattern, not the values.",
        *table.deviation_notes(rows),
        "",
        TABLE1.markdown(rows),
        "## Findings",
        "",
        findings(rows),
        "",
        "## Runs",
        "",
        RUNS.markdown(rows),
        "![FCE per epoch](speech_curves.png)",
        "",
        "## Provenance",
        "",
        provenance(runs, command),
    ])
    base = out_dir / "speech"
    write_table(base, md, CSV.records(rows))
    figures = plot_curves(rows, out_dir / "speech_curves")
    return [base.with_suffix(".md"), base.with_suffix(".csv"), *figures]
