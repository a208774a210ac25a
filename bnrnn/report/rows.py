"""Table rows shared by the report families: the complete runs of one (experiment, variant,
extra overrides), averaged over seeds, and every other run on a row of its own, marked."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable, ClassVar

from bnrnn.report.format import fmt, fmt_mean_std, ordered
from bnrnn.report.runs import Run, extra_overrides, status_mark


@dataclass
class Row:
    """One line of a table. Families subclass it to name their variants (``variant_names``),
    say how each column is read from a run (``metrics``) and how many digits it shows."""

    name: str   # the experiment (ptb_small, speech_synthetic, ...)
    norm: str
    extra: str  # the overrides that change what the runs measure, e.g. "data.batch_size=20"
    runs: list[Run]
    complete: bool

    variant_names: ClassVar[dict[str, str]] = {}
    metrics: ClassVar[dict[str, Callable[[Run], float | None]]] = {}
    digits: ClassVar[int] = 2

    @property
    def variant(self) -> str:
        label = self.variant_names.get(self.norm, self.norm)
        return f"{label} [{self.extra}]" if self.extra else label

    @property
    def status(self) -> str:
        return "complete" if self.complete else status_mark(self.runs[0])

    def values(self, key: str) -> list[float]:
        """The column's finite values over the row's runs."""
        return [v for v in (self.metrics[key](r) for r in self.runs)
                if v is not None and math.isfinite(v)]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def cell(self, key: str) -> str:
        """mean ± std over seeds for complete rows, the single run's value otherwise."""
        values = self.values(key)
        if self.complete:
            return fmt_mean_std(values, self.digits)
        return fmt(values[0] if values else None, self.digits)


def group_rows(runs: list[Run], row_class: type[Row], names: tuple[str, ...],
               variants: tuple[str, ...],
               extra: Callable[[Run], list[str]] = extra_overrides) -> list[Row]:
    """Complete runs grouped by (experiment, variant, extra overrides), every other run on its
    own; ordered by ``names``, then ``variants``, complete rows before the others. ``extra``
    gives a run's overrides that split a row (a family that records a setting elsewhere, such
    as PTB's protocol, leaves it out here)."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    rows: list[Row] = []
    for run in runs:
        key = (str(run.name), str(run.norm), " ".join(extra(run)))
        if run.complete:
            groups.setdefault(key, []).append(run)
        else:
            rows.append(row_class(*key, [run], complete=False))
    rows += [row_class(*key, sorted(rs, key=lambda r: (r.seed or 0, str(r.path))), complete=True)
             for key, rs in groups.items()]
    return sorted(rows, key=lambda r: (ordered(names, r.name), ordered(variants, r.norm), r.extra,
                                       not r.complete, r.status, r.runs[0].seed or 0,
                                       str(r.runs[0].path)))
