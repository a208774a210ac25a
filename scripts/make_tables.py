"""Regenerate every results table and figure from the run directories in ``results/runs/``.

    python scripts/make_tables.py            # what `make tables` runs

For each ``results/runs/<family>/`` whose module ``bnrnn/report/<family>.py`` defines
``build(runs_root, out_dir, command)``, calls it and prints the files it wrote. Reads run directories
only; the same runs give byte-identical files.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from bnrnn.report.runs import RunError  # noqa: E402

def is_family(name: str) -> bool:
    """Whether ``bnrnn/report/<name>.py`` is an experiment family's report: it defines ``build``
    (the package's helper modules, ``runs``, ``table``, ``format``, do not)."""
    if not name.isidentifier() or importlib.util.find_spec(f"bnrnn.report.{name}") is None:
        return False
    return callable(getattr(importlib.import_module(f"bnrnn.report.{name}"), "build", None))


def families(runs_dir: Path) -> tuple[list[str], list[str]]:
    """(families with a report module, folders without one) under ``runs_dir``."""
    found, unknown = [], []
    for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        (found if is_family(sub.name) else unknown).append(sub.name)
    return found, unknown


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("results/runs"),
                        help="folder of <family>/ run folders (default results/runs)")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="where tables and figures go (default results)")
    parser.add_argument("--family", action="append", default=None,
                        help="only this family (repeatable), e.g. --family ptb")
    args = parser.parse_args(argv)
    command = " ".join(["python scripts/make_tables.py", *argv])
    if not args.runs.is_dir():
        parser.error(f"{args.runs} does not exist: copy run directories into "
                     f"{args.runs}/<family>/ with scripts/collect_runs.py first")
    found, unknown = families(args.runs)
    for name in unknown:
        print(f"make_tables: skipping {args.runs / name}: no bnrnn/report/{name}.py", file=sys.stderr)
    if args.family:
        missing = sorted(set(args.family) - set(found))
        if missing:
            parser.error(f"no runs folder with a report module for {missing}; have {found}")
        found = [f for f in found if f in args.family]
    if not found:
        print(f"make_tables: nothing to build under {args.runs}", file=sys.stderr)
        return 1
    for name in found:
        module = importlib.import_module(f"bnrnn.report.{name}")
        try:
            written = module.build(args.runs / name, args.out, command)
        except RunError as e:
            print(f"make_tables: {name}: {e}", file=sys.stderr)
            return 1
        for path in written:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
