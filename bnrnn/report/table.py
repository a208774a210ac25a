"""Tables declared once: a column says its markdown header and cell and its CSV fields, a table is
a tuple of columns plus which rows it shows, and one spec renders both the markdown and the CSV.

    SEEDS = column("seeds", lambda r: ", ".join(...), n_runs=lambda r: len(r.runs), seeds=...)
    TABLE = Table((SIZE, VARIANT, SEEDS, metric("best valid ppl", "valid", "best_valid_ppl")))
    TABLE.markdown(rows)   # | size | variant | seeds | best valid ppl |
    TABLE.records(rows)    # [{"size": ..., "norm": ..., "overrides": ..., "n_runs": ..., ...}]

Adding a column to a table is one line in its tuple. A column without a header is CSV only, one
without fields markdown only. :class:`Row` is the row most tables show: the complete runs of one
(experiment, variant, extra overrides) averaged over seeds, every other run alone and marked;
findings read the same ``Row.mean(key)`` the columns show.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from bnrnn.report.format import DASH, fmt, fmt_mean_std, markdown_table, ordered
from bnrnn.report.runs import Run, extra_overrides, status_mark


@dataclass(frozen=True)
class Column:
    """One column: ``header`` and ``cell(row) -> str`` for the markdown (no header: CSV only),
    ``fields`` the (CSV name, value(row)) pairs it adds to the CSV (raw numbers in full
    precision; None is an empty cell)."""

    header: str | None
    cell: Callable[[Any], str] | None = None
    fields: tuple[tuple[str, Callable[[Any], Any]], ...] = ()


def column(header: str | None, cell: Callable[[Any], str] | None = None,
           **fields: Callable[[Any], Any]) -> Column:
    """A column from its header, its markdown cell and its CSV fields (in this order)."""
    return Column(header, cell, tuple(fields.items()))


def shown(header: str | None, name: str, value: Callable[[Any], Any],
          show: Callable[[Any], str] = str) -> Column:
    """A column of one value: the CSV field ``name``, the markdown cell ``show(value)`` (``—``
    for None)."""
    def cell(row) -> str:
        v = value(row)
        return DASH if v is None else show(v)
    return Column(header, cell, ((name, value),))


def metric(header: str | None, key: str, csv: str | None = None) -> Column:
    """A :class:`Row` metric: mean ± std over seeds in the markdown (:meth:`Row.cell`), and
    ``<csv>_mean``, ``<csv>_std`` (``csv`` defaults to ``key``) in the CSV."""
    csv = csv or key
    return Column(header, lambda r: r.cell(key),
                  ((f"{csv}_mean", lambda r: r.mean(key)), (f"{csv}_std", lambda r: r.std(key))))


def joined(header: str, *columns: Column, when: Callable[[Any], bool] | None = None) -> Column:
    """One markdown cell ``a / b`` from several columns, their CSV fields side by side; ``—``
    for the whole cell where ``when(row)`` is false."""
    def cell(row) -> str:
        if when is not None and not when(row):
            return DASH
        return " / ".join(c.cell(row) for c in columns)
    return Column(header, cell, tuple(f for c in columns for f in c.fields))


@dataclass(frozen=True)
class Table:
    """Columns in display order; ``where(row)`` picks the rows it shows (all by default);
    ``empty`` replaces the markdown when no row is picked (None: the header alone)."""

    columns: tuple[Column, ...]
    where: Callable[[Any], bool] | None = None
    empty: str | None = None

    def __post_init__(self):
        mute = [c.header for c in self.columns if c.header is not None and c.cell is None]
        if mute:
            raise ValueError(f"Table: column(s) {mute} have a header but no cell; give each a "
                             "cell(row) -> str, or no header for a CSV-only column")

    def select(self, rows: list) -> list:
        return [r for r in rows if self.where is None or self.where(r)]

    def markdown(self, rows: list) -> str:
        rows, cols = self.select(rows), [c for c in self.columns if c.header is not None]
        if not rows and self.empty is not None:
            return self.empty
        return markdown_table([c.header for c in cols], [[c.cell(r) for c in cols] for r in rows])

    def records(self, rows: list) -> list[dict]:
        """One CSV record per picked row: every column's fields in column order. A name two
        columns share (a second table's identity columns) keeps its first place."""
        out = []
        for row in self.select(rows):
            record: dict[str, Any] = {}
            for c in self.columns:
                for name, value in c.fields:
                    v = value(row)
                    if name in record and record[name] is not v and record[name] != v:
                        raise ValueError(f"CSV field {name!r} is declared twice with different "
                                         f"values ({record[name]!r}, {v!r}); rename one")
                    record[name] = v
            out.append(record)
        return out

    def __add__(self, other: "Table") -> "Table":
        """This table's rows with the other's columns after its own (e.g. one CSV for the
        columns of several markdown tables)."""
        return Table(self.columns + tuple(c for c in other.columns if c not in self.columns),
                     self.where, self.empty)


# ---------------------------------------------------------------------- rows of runs
@dataclass
class Row:
    """One line of a table. Families subclass it to name their variants (``variant_names``),
    say how each metric is read from a run (``metrics``) and how many digits it shows."""

    name: str   # the experiment (ptb_small, speech_synthetic, ...)
    norm: str
    extra: str  # the overrides that change what the runs measure, e.g. "data.batch_size=20"
    runs: list[Run]
    complete: bool
    protocol: str = ""  # how the runs were made, where a family distinguishes protocols

    variant_names: ClassVar[dict[str, str]] = {}
    metrics: ClassVar[dict[str, Callable[[Run], float | None]]] = {}
    digits: ClassVar[int] = 2

    @property
    def variant(self) -> str:
        label = self.variant_names.get(self.norm, self.norm)
        return f"{label} [{self.extra}]" if self.extra else label

    @property
    def status(self) -> str:
        """``complete``; ``scaled`` for a complete run off its published protocol's values; else
        the run's mark (shortened, diverged, ...)."""
        if not self.complete:
            return status_mark(self.runs[0])
        return "scaled" if any(r.scaled for r in self.runs) else "complete"

    @property
    def label(self) -> str:
        """The variant, with its run's status where the row is not complete (figure legends)."""
        status = self.runs[0].status
        return self.variant + ("" if self.complete else
                               f" ({'shortened' if status == 'completed' else status})")

    def values(self, key: str) -> list[float]:
        """The metric's finite values over the row's runs."""
        return [v for v in (self.metrics[key](r) for r in self.runs)
                if v is not None and math.isfinite(v)]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        """Sample standard deviation over seeds (None for fewer than two values)."""
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else None

    def cell(self, key: str) -> str:
        """mean ± std over seeds for complete rows, the single run's value otherwise."""
        values = self.values(key)
        if self.complete:
            return fmt_mean_std(values, self.digits)
        return fmt(values[0] if values else None, self.digits)


def group_rows(runs: list[Run], row_class: type[Row], names: tuple[str, ...],
               variants: tuple[str, ...], extra: Callable[[Run], list[str]] = extra_overrides,
               protocol: Callable[[Run], str] | None = None,
               protocols: tuple[str, ...] = ()) -> list[Row]:
    """Complete runs grouped by (experiment, protocol, variant, extra overrides), every other
    run on its own; ordered by ``names``, ``protocols``, ``variants``, complete rows first.
    ``extra`` gives a run's overrides that split a row (a family that records a setting
    elsewhere, such as PTB's protocol, leaves it out here); ``protocol`` names a run's protocol
    (none: every row's is "")."""
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    rows: list[Row] = []
    for run in runs:
        key = (str(run.name), str(run.norm), " ".join(extra(run)), protocol(run) if protocol else "")
        if run.complete:
            groups.setdefault(key, []).append(run)
        else:
            rows.append(row_class(*key[:3], [run], False, key[3]))
    rows += [row_class(*key[:3], sorted(rs, key=lambda r: (r.seed or 0, str(r.path))), True, key[3])
             for key, rs in groups.items()]
    return sorted(rows, key=lambda r: (ordered(names, r.name), ordered(protocols, r.protocol),
                                       ordered(variants, r.norm), r.extra, not r.complete,
                                       r.status, r.runs[0].seed or 0, str(r.runs[0].path)))


def deviation_notes(rows: list[Row]) -> list[str]:
    """One markdown bullet per experiment whose runs depart from its published protocol: each
    deviation (from any of its runs) and each substitute, so no scaled number reads as the
    paper's protocol."""
    notes = []
    for name in dict.fromkeys(r.name for r in rows):
        runs = [run for r in rows if r.name == name for run in r.runs]
        found = list(dict.fromkeys(d for run in runs for d in run.deviations))
        substitutes = list(dict.fromkeys(s for run in runs for s in run.substitutes))
        if found:
            notes.append(f"- **Scaled:** `{name}` runs depart from the published protocol in "
                         f"{'; '.join(found)}. Their numbers are not the paper's protocol.")
        if substitutes:
            notes.append(f"- **Substitute** in `{name}`: {'; '.join(substitutes)}.")
    return notes


def hardware(row) -> str | None:
    """The row's hardware, each kind once, with how many runs shared the device where a run
    recorded it (None for a row without runs)."""
    def one(run: Run) -> str:
        shared = run.final.get("concurrent_runs")
        return (run.hardware or "unknown") + (f", shared by {shared} runs" if shared and shared > 1 else "")
    return "; ".join(sorted({one(r) for r in row.runs})) or None


# The columns every table of Rows starts from.
VARIANT = column("variant", lambda r: r.variant, norm=lambda r: r.norm, overrides=lambda r: r.extra)
STATUS = column("status", lambda r: r.status, status=lambda r: r.status)
SEEDS = column("seeds", lambda r: ", ".join(str(run.seed) for run in r.runs) or DASH,
               n_runs=lambda r: len(r.runs), seeds=lambda r: " ".join(str(run.seed) for run in r.runs))
EPOCHS = column("epochs", lambda r: f"{r.runs[0].epochs_completed}/{r.runs[0].protocol_epochs or '?'}"
                if r.runs else DASH,
                epochs_completed=lambda r: r.runs[0].epochs_completed if r.runs else None,
                protocol_epochs=lambda r: r.runs[0].protocol_epochs if r.runs else None)
HARDWARE = column("hardware", lambda r: hardware(r) or DASH, hardware=hardware)
