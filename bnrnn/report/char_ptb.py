"""Character-level Penn Treebank: Cooijmans et al. 2016 §5.2, LSTM against BN-LSTM.

``build(runs_root, out_dir, command)`` reads the ``cooijmans_char_ptb`` runs under ``runs_root``
(``results/runs/char_ptb``; it may hold none yet) and writes ``char_ptb.md`` + ``char_ptb.csv``:

- per variant (``none``, ``bn_recurrent``) and protocol, the valid and test bits per character
  with the whole split evaluated as one sequence (final.json ``valid_bpc_stream``,
  ``test_bpc_stream``), the training-time evaluation on 100-character sequences beside it, and
  Cooijmans et al.'s published test bpc; a variant without a run has a row saying so;
- test bpc against the evaluation length (final.json ``test_bpc_by_length``: {"50": bpc, ...,
  "whole": bpc});
- every run with its hardware, date, git revision and exact command, and every setting in which
  a run or the experiment's config departs from the paper's protocol;
- ``char_ptb_curves.png`` + ``.pdf`` once there are runs: train and valid bpc per epoch.

Runs that completed the 50 epochs are averaged over seeds; every other run has a row of its own,
marked in the status column.
"""
from __future__ import annotations

import functools
from pathlib import Path

from bnrnn.report import table
from bnrnn.report.format import DASH, curves_figure, figure, ordered, provenance, save_figure, write_table
from bnrnn.report.runs import MECHANICS, STATUS_MARKED, Run, RunError, extra_overrides, load_runs
from bnrnn.report.table import (EPOCHS, HARDWARE, SEEDS, STATUS, VARIANT, Table, column, metric,
                                shown)

NAME = "cooijmans_char_ptb"  # the experiment whose runs this family reads
VARIANTS = ("none", "bn_recurrent")
VARIANT_NAMES = {"none": "LSTM (baseline)", "bn_recurrent": "BN-LSTM (Cooijmans)"}
COLOURS = {"none": "#1f77b4", "bn_recurrent": "#2ca02c"}  # as in results/ptb_curves.png

# Cooijmans et al. 2016, "Recurrent Batch Normalization" (arXiv:1603.09025), §5.2, the Penn
# Treebank table: test bits per character (docs/reference.md §4).
PAPER_SOURCE = "Cooijmans et al. 2016, §5.2, Penn Treebank table (docs/reference.md §4)"
PAPER_TEST_BPC = {"none": 1.38, "bn_recurrent": 1.32}
# The protocol the paper states (docs/reference.md §4), as config keys: a run or config with
# another value departs from it.
PROTOCOL = {
    "model.hidden_size": 1000, "model.num_layers": 1, "model.embedding_size": None,  # one-hot
    "optim._target_": "torch.optim.Adam", "optim.lr": 2e-3, "data.seq_len": 100,
    "data.batch_size": 64, "trainer.clip_grad_norm": 1.0, "trainer.protocol_epochs": 50,
}
# The data options that say which recipe a run followed (the paper's text or Cooijmans' code);
# runs from before an option existed ran its default.
DATA_PROTOCOL = {"encoding": "bnrnn", "examples": "shifted", "crop": "none"}
NEUTRAL = MECHANICS | STATUS_MARKED | {f"data.{k}" for k in DATA_PROTOCOL}  # shown as the protocol
LENGTHS = ("50", "100", "200", "500", "1000", "whole")  # keys of test_bpc_by_length


def protocol_of(config: dict) -> str:
    """The run's protocol (``protocol=cooijmans_text|cooijmans_code``, configs/protocol/); for a
    run from before those existed, its data recipe, e.g. 'encoding=bnrnn, examples=shifted,
    crop=none'."""
    name = (config.get("protocol") or {}).get("name")
    if name:
        return name
    data = config.get("data") or {}
    return ", ".join(f"{k}={data.get(k, default)}" for k, default in DATA_PROTOCOL.items())


def _by_length(length: str):
    return lambda r: (r.final.get("test_bpc_by_length") or {}).get(length)


METRICS = {
    "valid_stream": lambda r: r.final.get("valid_bpc_stream"),
    "test_stream": lambda r: r.final.get("test_bpc_stream"),
    "valid": lambda r: r.best.get("valid_bpc"),  # the best-validation epoch's, sequences of 100
    "test": lambda r: r.test.get("bpc"),  # at the best-validation weights, sequences of 100
    **{f"length_{n}": _by_length(n) for n in LENGTHS},
}


class Row(table.Row):
    """One line of the tables: the runs of one (protocol, variant, extra overrides); a variant
    that has no run yet has a row without runs."""

    variant_names = VARIANT_NAMES
    metrics = METRICS
    digits = 3

    @property
    def status(self) -> str:
        return super().status if self.runs else "not yet run"


def group_rows(runs: list[Run]) -> list[Row]:
    """Complete runs grouped by (protocol, variant, extra overrides), every other run on its
    own, and a "not yet run" row (under the experiment's config) for each variant without any."""
    rows = table.group_rows(runs, Row, (NAME,), VARIANTS, lambda r: extra_overrides(r, NEUTRAL),
                            lambda r: protocol_of(r.config))
    missing = [Row(NAME, norm, "", [], False, protocol_of(experiment_config()))
               for norm in VARIANTS if norm not in {r.norm for r in rows}]
    return sorted(rows + missing, key=lambda r: (ordered(VARIANTS, r.norm), not r.runs))


@functools.lru_cache(maxsize=None)  # the configs do not change while a process runs
def experiment_config() -> dict:
    """``experiment=cooijmans_char_ptb`` as Hydra composes it now: what a new run trains with."""
    from hydra import compose, initialize_config_dir

    from bnrnn.report.runs import resolve_portably
    from bnrnn.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={NAME}"])
    return resolve_portably(cfg)  # the protocol's values resolved; ${oc.env:...} kept as written


def _setting(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "absent"
        node = node[part]
    return node


def departures(config: dict) -> list[str]:
    """The settings of ``config`` that differ from the paper's protocol, e.g.
    'data.batch_size=32 (paper: 64)'."""
    return [f"{key}={_setting(config, key)} (paper: {paper})" for key, paper in PROTOCOL.items()
            if _setting(config, key) != paper]


def _deviations(row: Row) -> str:
    """What this row's runs changed from the paper: their overrides' departures from the
    protocol and a data limit (a shortened run says so in its status)."""
    found = sorted({d for r in row.runs for d in departures(r.config)})
    limits = sorted({r.final["limit_batches"] for r in row.runs if r.final.get("limit_batches")})
    found += [f"data limited to {n} batches per split" for n in limits]
    return "; ".join(found) or ("none" if row.runs else DASH)


def _paper(row: Row) -> float | None:
    return PAPER_TEST_BPC.get(row.norm) if not row.extra else None


def _versus_paper(row: Row) -> float | None:
    ours, paper = row.mean("test_stream"), _paper(row)
    return ours - paper if row.complete and ours is not None and paper is not None else None


PROTOCOL_COLUMN = column("protocol", lambda r: r.protocol, protocol=lambda r: r.protocol)

BPC = Table((
    VARIANT, PROTOCOL_COLUMN, STATUS, SEEDS, EPOCHS,
    metric("valid bpc (whole split)", "valid_stream", "valid_bpc_stream"),
    metric("test bpc (whole split)", "test_stream", "test_bpc_stream"),
    metric("valid bpc (sequences of 100)", "valid", "valid_bpc_best"),
    metric("test bpc (sequences of 100)", "test", "test_bpc"),
    shown("Cooijmans et al. test bpc", "paper_test_bpc", _paper),
    shown("Δ test vs paper", "diff_test_bpc_stream_vs_paper", _versus_paper, lambda d: f"{d:+.3f}"),
    column("deviations from the paper", _deviations),
))

BY_LENGTH = Table((
    VARIANT, PROTOCOL_COLUMN, STATUS, SEEDS,
    *(metric("whole split" if n == "whole" else n, f"length_{n}", f"test_bpc_length_{n}")
      for n in LENGTHS),
), where=lambda r: any(r.values(f"length_{n}") for n in LENGTHS),
   empty="No run has recorded `test_bpc_by_length` yet.\n")

CSV = BPC + BY_LENGTH + Table((HARDWARE,))  # char_ptb.csv: one record per row

RUNS = Table((  # rows: runs
    column("variant", lambda r: VARIANT_NAMES.get(r.norm, r.norm)),
    column("seed", lambda r: str(r.seed)),
    column("status", lambda r: r.status),
    column("hardware", lambda r: r.hardware or "unknown"),
    column("finished", lambda r: r.final.get("finished") or DASH),
    column("git revision", lambda r: r.final.get("git_revision") or "unknown"),
    column("command", lambda r: f"`{r.final['command']}`" if r.final.get("command") else DASH),
), empty="No run yet.\n")


def findings(rows: list[Row]) -> str:
    """What the complete rows show against the paper, from the same means the tables show."""
    complete = {r.norm: r for r in rows if r.complete and not r.extra}
    base, bn = complete.get("none"), complete.get("bn_recurrent")
    sentences = []
    for row in (base, bn):
        ours = row.mean("test_stream") if row else None
        if ours is not None:
            sentences.append(f"{VARIANT_NAMES[row.norm]}: test {ours:.3f} bpc over the whole "
                             f"split against the paper's {_paper(row)} ({_versus_paper(row):+.3f}).")
    if base and bn and None not in (base.mean("test_stream"), bn.mean("test_stream")):
        ours = bn.mean("test_stream") - base.mean("test_stream")
        paper = PAPER_TEST_BPC["bn_recurrent"] - PAPER_TEST_BPC["none"]
        sentences.append(f"BN-LSTM minus LSTM: {ours:+.3f} bpc here, {paper:+.2f} in the paper.")
        if {len(base.runs), len(bn.runs)} == {1}:
            sentences.append("Each row is a single seed; a difference of a few hundredths may be "
                             "seed noise.")
    if not sentences:
        sentences.append("No variant has a complete run with a whole-split test bpc yet, so "
                         "nothing is compared with the paper.")
    marked = sum(len(r.runs) for r in rows if r.runs and not r.complete)
    if marked:
        sentences.append(f"{marked} run(s) did not complete the protocol (see status) and are "
                         "left out of this comparison.")
    return " ".join(sentences)


def plot_curves(rows: list[Row], base: Path) -> list[Path]:
    """Train (dotted) and valid (solid) bpc per epoch on sequences of 100, one colour per
    variant, rows that are not complete faint; the mean curve over seeds."""
    return curves_figure([("character-level PTB", rows)], ("train_bpc", "valid_bpc"), base=base,
                         colour=lambda row: COLOURS.get(row.norm, "#7f7f7f"), panel_width=6.0,
                         ylabel="bits per character (train dotted, valid solid)",
                         log_subs=(1.0, 1.2, 1.4, 1.6, 1.8))


def plot_lengths(rows: list[Row], base: Path) -> list[Path]:
    """Test bpc against evaluation length (``test_bpc_by_length``: examples of 50 ... 1000 from
    a fresh state, then the whole split as one stream at the right), one line per row with
    any, the mean over its runs; faint where the row is not complete. None without data."""
    lengths = [n for n in LENGTHS if n != "whole"]
    drawn = [r for r in rows if any(r.mean(f"length_{n}") is not None for n in LENGTHS)]
    if not drawn:
        return []
    with figure(6.0, 4.2) as fig:
        ax = fig.add_subplot(1, 1, 1)
        positions = list(range(len(LENGTHS)))
        for row in drawn:
            values = [row.mean(f"length_{n}") for n in LENGTHS]
            points = [(x, v) for x, v in zip(positions, values) if v is not None]
            ax.plot(*zip(*points), marker="o", color=COLOURS.get(row.norm, "#7f7f7f"),
                    alpha=1.0 if row.complete else 0.4, label=row.label)
        ax.set_xticks(positions, [*lengths, "whole split"])
        ax.set_xlabel("evaluation length (symbols per example; whole: one stream)")
        ax.set_ylabel("test bits per character")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_figure(fig, base)


def build(runs_root: Path, out_dir: Path, command: str) -> list[Path]:
    """Write ``out_dir/char_ptb.{md,csv}`` (and the curves once there are runs) from the runs
    under ``runs_root`` (none is fine)."""
    runs = load_runs(runs_root)
    foreign = [str(r.path) for r in runs if r.name != NAME or r.norm is None]
    if foreign:
        raise RunError(f"not {NAME} runs (final.json or .hydra/config.yaml must give name "
                       f"{NAME} and a norm): {foreign}")
    rows = group_rows(runs)
    config_departures = departures(experiment_config())
    md = "\n".join([
        "# Character-level Penn Treebank: Cooijmans et al. §5.2, LSTM against BN-LSTM",
        "",
        f"`experiment={NAME}` with `model.norm=none` (LSTM) or `model.norm=bn_recurrent` "
        "(BN-LSTM: batch norm of the input and recurrent terms and of the cell, per-step "
        "statistics, γ = 0.1): one-hot characters, one LSTM of 1000 units, Adam with learning "
        "rate 2e-3, sequences of 100, batch 64, gradient norm clipped at 1.0, orthogonal "
        "initialisation, 50 epochs. Bits per character (bpc) are the cross-entropy over ln 2. "
        "\"Whole split\": the split evaluated as one sequence, the state carried throughout "
        "(final.json `valid_bpc_stream`, `test_bpc_stream`), the number set beside the "
        "paper's; \"sequences of 100\": the training-time evaluation on sequences of 100 "
        "from a zero state, which selects the best epoch (valid at that epoch, test with its "
        "weights). Complete runs: mean ± sample std over seeds; any other run has a row of its "
        "own, marked in the status column. The protocol column names the run's protocol "
        "(`protocol=cooijmans_text`, the paper's text, or `cooijmans_code`, the official code; "
        "docs/protocols.md).",
        "",
        f"- Paper column: {PAPER_SOURCE}: test bpc {PAPER_TEST_BPC['none']} (LSTM), "
        f"{PAPER_TEST_BPC['bn_recurrent']} (BN-LSTM). Δ is ours (whole split) minus the paper's, "
        "for complete runs only.",
        "- The experiment's config, as composed now, departs from the paper's protocol in: "
        + ("; ".join(config_departures) if config_departures else "nothing") + ".",
        "- To add runs: `python -m bnrnn.train -m experiment=cooijmans_char_ptb "
        "model.norm=none,bn_recurrent`, then `python scripts/collect_runs.py "
        "multirun/cooijmans_char_ptb/<date> --dest results/runs/char_ptb` and `make tables`.",
        "",
        BPC.markdown(rows),
        "## Findings",
        "",
        findings(rows),
        "",
        "## Test bpc against the evaluation length",
        "",
        "Test bpc with the test split evaluated in sequences of the given number of characters, "
        "and as one sequence (\"whole split\"), by models trained on sequences of 100 "
        "(final.json `test_bpc_by_length`): how far each model generalizes beyond the length it "
        "was trained on.",
        "",
        BY_LENGTH.markdown(rows),
        *(["![Test bpc against evaluation length](char_ptb_lengths.png)", ""]
          if any(r.final.get("test_bpc_by_length") for r in runs) else []),
        "## Runs",
        "",
        RUNS.markdown(sorted(runs, key=lambda r: (ordered(VARIANTS, r.norm), r.seed or 0,
                                                  str(r.path)))),
        *(["![Train (dotted) and valid (solid) bpc per epoch](char_ptb_curves.png)", ""]
          if runs else []),
        "## Provenance",
        "",
        provenance(runs, command),
    ])
    base = Path(out_dir) / "char_ptb"
    write_table(base, md, CSV.records(rows))
    figures = plot_curves([r for r in rows if r.runs], base.with_name("char_ptb_curves")) if runs else []
    figures += plot_lengths([r for r in rows if r.runs], base.with_name("char_ptb_lengths"))
    return [base.with_suffix(".md"), base.with_suffix(".csv"), *figures]
