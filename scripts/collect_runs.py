"""Copy the small files of Hydra run directories into ``results/runs/<family>/``.

    python scripts/collect_runs.py multirun/reproduce_ptb/2025-01-01_12-00-00-123456 --dest results/runs/ptb

Every directory under each SRC that holds ``final.json`` is a run. Only ``final.json``,
``metrics.jsonl``, ``.hydra/config.yaml`` and ``.hydra/overrides.yaml`` are copied — never
checkpoints or logs — into ``<dest>/<name>/<norm>/seed<seed>`` (``--layout name``, the default)
or ``<dest>/<path relative to SRC>`` (``--layout relative``). A destination that already holds
the same run is left as it is; one that holds a different run is an error unless ``--replace``
is given, and each replacement is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from bnrnn.io import atomic_write, not_a_directory  # noqa: E402
from bnrnn.report.runs import MECHANICS, Run, RunError, extra_overrides, load_run, load_runs  # noqa: E402

FILES = ("final.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml")


class CollectError(RuntimeError):
    pass


def target_name(run: Run, src: Path, layout: str) -> Path:
    """The stable directory name of ``run`` inside the destination."""
    if layout == "relative":
        rel = run.path.resolve().relative_to(src.resolve())
        return Path(src.resolve().name) if rel == Path(".") else rel
    missing = [k for k, v in (("name", run.name), ("norm", run.norm), ("seed", run.seed)) if v is None]
    if missing:
        raise CollectError(f"{run.path}: final.json/config has no {', '.join(missing)}; "
                           "use --layout relative for runs that are not named experiments")
    # a run with other overrides (e.g. data.batch_size=20) never lands on the protocol run's place
    suffix = "".join(f"_{o}" for o in extra_overrides(run, MECHANICS)).replace("/", "-")
    return Path(str(run.name)) / str(run.norm) / f"seed{run.seed}{suffix}"


def _files(run_dir: Path) -> dict[str, bytes]:
    return {f: (run_dir / f).read_bytes() for f in FILES if (run_dir / f).is_file()}


def plan_copy(run: Run, dest: Path, replace: bool) -> str:
    """What copying ``run`` to ``dest`` would do: 'copy', 'unchanged' or 'replace'; raises
    :class:`CollectError` if ``dest`` holds something else and ``replace`` is off."""
    if not dest.exists():
        return "copy"
    if not (dest / "final.json").is_file():
        if any(dest.iterdir()):
            raise CollectError(f"{dest} exists and is not a run directory; remove it or choose "
                               "another --dest")
        return "copy"
    if _files(dest) == _files(run.path):
        return "unchanged"
    if not replace:
        raise CollectError(
            f"{dest} already holds a different run (finished "
            f"{load_run(dest).final.get('finished', '?')}) than {run.path}; pass --replace to "
            "overwrite it, or --layout relative to keep both")
    return "replace"


def copy_run(run: Run, dest: Path) -> None:
    """Copy ``run``'s small files into ``dest``: every file is written in full beside its
    place first, and only then are they all renamed into place, so a write that fails (a full
    disk) leaves the old record whole, never the new final.json beside the old metrics."""
    new = _files(run.path)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in new.items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            staged.append((Path(tmp), target))
            # atomic_write to the temp name: the same fsync and permissions as every other write
            atomic_write(tmp, lambda f, data=data: f.write(data), mode="wb")
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for name in FILES:  # a file the new run lacks must not survive from the old one
        if name not in new and (dest / name).exists():
            (dest / name).unlink()


def collect(sources: list[Path], dest: Path, layout: str = "name", replace: bool = False,
            dry_run: bool = False) -> list[tuple[Path, Path, str]]:
    """Copy every run under ``sources`` into ``dest``; returns (source, target, action) rows.

    All targets are computed before anything is written, so two runs that would land in the
    same directory are an error and nothing is copied."""
    plan: dict[Path, tuple[Run, Path]] = {}
    for src in sources:
        if dest.resolve().is_relative_to(src.resolve()):
            raise CollectError(f"--dest {dest} lies inside the source {src}; collect into a "
                               "folder outside it (e.g. results/runs/<family>)")
        runs = load_runs(src)
        if not runs:
            raise CollectError(f"{src}: no run directory (no final.json) under it")
        for run in runs:
            target = dest / target_name(run, src, layout)
            if target in plan:
                raise CollectError(f"{plan[target][0].path} and {run.path} would both be copied to "
                                   f"{target}; use --layout relative or collect them separately")
            plan[target] = (run, src)
    # every conflict is found before the first file is written
    actions = {target: plan_copy(run, target, replace) for target, (run, _) in plan.items()}
    done = []
    for target, (run, _) in plan.items():
        action = actions[target]
        if not dry_run and action != "unchanged":
            copy_run(run, target)
        done.append((run.path, target, ("would " if dry_run else "") + action))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, metavar="SRC",
                        help="run or multirun directories (searched recursively for final.json)")
    parser.add_argument("--dest", type=Path, required=True, help="e.g. results/runs/ptb")
    parser.add_argument("--layout", choices=("name", "relative"), default="name",
                        help="name: <name>/<norm>/seed<seed> (default); relative: the path under SRC")
    parser.add_argument("--replace", action="store_true",
                        help="overwrite a destination that holds a different run")
    parser.add_argument("--dry-run", action="store_true", help="print what would be copied")
    args = parser.parse_args(argv)
    for src in args.sources:
        if not src.is_dir():
            parser.error(f"{src} is not a directory")
    # the nearest existing part of --dest must be a folder: a file there would fail only at the
    # first copy, with a traceback
    if (blocking := not_a_directory(args.dest)) is not None:
        what = "is a file" if blocking == args.dest else f"lies under the file {blocking}"
        parser.error(f"--dest {args.dest} {what}; give a folder (e.g. results/runs/<family>)")
    try:
        rows = collect(args.sources, args.dest, args.layout, args.replace, args.dry_run)
    except (CollectError, RunError) as e:
        print(f"collect_runs: {e}", file=sys.stderr)
        return 1
    for src, target, action in rows:
        print(f"{action:>10}  {src} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
