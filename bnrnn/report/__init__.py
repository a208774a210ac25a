"""Results tables and figures, generated from run directories only (``scripts/make_tables.py``).

``runs`` reads run directories, ``table`` declares tables once (columns that render both the
markdown and the CSV; the seed-averaged :class:`~bnrnn.report.table.Row`), ``format`` writes
deterministic markdown/CSV/figures, and each experiment family has a module (``ptb``, ...) with
``build(runs_root, out_dir, command)``.
"""
from bnrnn.report.format import fmt, fmt_mean_std, markdown_table, provenance, write_table
from bnrnn.report.runs import Run, RunError, load_run, load_runs

__all__ = ["Run", "RunError", "load_run", "load_runs", "fmt", "fmt_mean_std", "markdown_table",
           "provenance", "write_table"]
