"""Check a campaign's job list before any of its jobs starts (scripts/campaign.sh runs this first).

    python scripts/check_campaign.py JOBS_FILE MAX_TIME_S [override ...]

Every line is checked as campaign.sh will run it: a job's run name (a relative path, one per
job) and its configuration (composed and validated as ``python -m bnrnn.train`` would, with the
campaign's overrides and ``trainer.max_time=MAX_TIME_S``; a population's members too, and its
data files), a ``!prepare`` line's configuration, a ``!grid`` line's norm. Each problem is one
line, ``campaign: JOBS_FILE:LINE: ...``; exit 2 if there is any, so a malformed line costs no
device time and no job of the campaign starts.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

GRID_NORMS = ("none", "bn_sum")  # bnrnn.population_grid --norm


def _check_config(compose, overrides: list[str], job: bool) -> None:
    """Compose and validate ``overrides`` as bnrnn.train (``job``) or prepare_data would;
    raises ConfigError, or ValueError with Hydra's first line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bnrnn import population_run
    from bnrnn.config import check_data_files, validate

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(_one_line(str(e))) from None
    if job and population_run.requested(cfg):  # as population_run.run checks it
        validate(cfg)
        for member in population_run.plan(cfg, overrides):
            check_data_files(member.resolved)
        return
    cfg = population_run.without_population(cfg) if job else cfg
    check_data_files(validate(cfg))


def _one_line(message: str) -> str:
    """Hydra's multi-line error as one line: its first two lines (what, and often the fix) and
    the options it lists (``Available options in 'experiment': ...``)."""
    lines = [line.strip() for line in message.strip().splitlines()]
    head = lines[:lines.index("")] if "" in lines else lines
    out = " ".join(head[:2])
    if "Available options" in message:
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = []
        for line in lines[start + 1:]:
            if not line or " " in line:
                break
            options.append(line)
        out += f"; {lines[start].rstrip(':')}: {', '.join(options)}"
    return out


def check(jobs_file: Path, max_time: str, overrides: list[str]) -> list[str]:
    """One line per problem of the campaign (empty: every job can start)."""
    from hydra import compose, initialize_config_dir

    from bnrnn.config import CONFIG_DIR, ConfigError

    try:
        seconds = float(max_time)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        return [f"campaign: MAX_TIME_S={max_time}: must be a number of seconds > 0 (each job's "
                f"trainer.max_time), e.g. 480"]
    problems, names = [], {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        def composed(words):
            return compose(config_name="config", overrides=words)

        for number, line in enumerate(jobs_file.read_text().splitlines(), 1):
            where = f"campaign: {jobs_file}:{number}"
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            name, args = words[0], words[1:]
            try:
                if name == "!prepare":
                    _check_config(composed, [*args, *overrides], job=False)
                    continue
                path = PurePosixPath(name)
                if "=" in name:
                    raise ValueError(f"the run name {name!r} is an override; a job line is "
                                     f"'<run name> <overrides...>', e.g. small/none {line.strip()}")
                if path.is_absolute() or ".." in path.parts or name.startswith("!"):
                    raise ValueError(f"the run name {name!r} must be a relative path under the "
                                     f"campaign's runs/ (e.g. small/none), or !prepare")
                if name in names:
                    raise ValueError(f"the run name {name!r} is also line {names[name]}'s; each "
                                     f"job needs its own run directory")
                names[name] = number
                if args[:1] == ["!grid"]:
                    if len(args) < 2 or args[1] not in GRID_NORMS:
                        raise ValueError(f"a grid job is '<run name> !grid <norm> [overrides...]' "
                                         f"with norm one of {', '.join(GRID_NORMS)}")
                    args = ["experiment=grid_char_rnn", f"model.norm={args[1]}", *args[2:]]
                _check_config(composed, [*args, f"trainer.max_time={max_time}", "quiet=true",
                                         *overrides], job=True)
            except (ConfigError, ValueError) as e:
                problems.append(f"{where}: {e}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: check_campaign.py JOBS_FILE MAX_TIME_S [override ...]", file=sys.stderr)
        return 2
    problems = check(Path(argv[0]), argv[1], argv[2:])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"campaign: {len(problems)} problem(s) in {argv[0]}; no job was started",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
