"""The appendix grid search as populations: ``python -m bnrnn.population_grid --norm bn_sum``.

The points are those Hydra's Optuna sweeper draws for ``+hparams_search=grid`` (the same search
space read from ``configs/hparams_search/grid.yaml``, the same seeded ``RandomSampler``, asked
one trial after another and suggested in the same order), so a trial here is the trial of that
number there. Trials are grouped by batch size (a population has one shape); each group trains
as one population run (``population.optim.lr`` / ``population.optim.momentum`` lists, one member
per trial) in ``<sweep dir>/b<batch>/``, each member in ``<trial number>/`` — an ordinary run
directory, so ``scripts/collect_runs.py`` and ``bnrnn.report.grid`` read it as a trial. Each
member's result is told to the study (its best validation cross-entropy, ``inf`` when it
diverged); ``<sweep dir>/population_grid.json`` lists every trial, its point, directory and value.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from bnrnn.config import CONFIG_DIR
from bnrnn.io import write_json

SEARCH = Path(CONFIG_DIR) / "hparams_search" / "grid.yaml"


def search_space() -> tuple[dict, int]:
    """The grid's distributions (in the sweeper's order) and its sampler seed, parsed as the
    Optuna sweeper parses them."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    sweeper = OmegaConf.load(SEARCH).hydra.sweeper
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    if fixed:
        raise ValueError(f"{SEARCH}: fixed values in the search space are not supported: {fixed}")
    return distributions, int(sweeper.sampler.seed)


def sample(n_trials: int) -> tuple[optuna.Study, list[optuna.Trial]]:
    """The first ``n_trials`` points of the grid's seeded random search."""
    distributions, seed = search_space()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed))
    trials = []
    for _ in range(n_trials):
        trial = study.ask()
        for name, distribution in distributions.items():
            trial._suggest(name, distribution)  # what the sweeper calls, in its order
        trials.append(trial)
    return study, trials


def groups(trials: list[optuna.Trial]) -> dict[int, list[optuna.Trial]]:
    """Trials by batch size, in trial order within each."""
    out: dict[int, list[optuna.Trial]] = {}
    for t in trials:
        out.setdefault(int(t.params["data.batch_size"]), []).append(t)
    return dict(sorted(out.items()))


def population_overrides(batch: int, trials: list[optuna.Trial]) -> list[str]:
    """The population run of one batch-size group: one member per trial, named by its number."""
    def values(key):
        return "[" + ",".join(str(t.params[key]) for t in trials) + "]"
    return [f"data.batch_size={batch}", f"population.optim.lr={values('optim.lr')}",
            f"population.optim.momentum={values('optim.momentum')}",
            "population.member_dir=[" + ",".join(f"'{t.number}'" for t in trials) + "]"]


def objective(final: dict) -> float:
    """The sweep objective bnrnn.train.run returns for a single trial."""
    if final.get("status") != "completed" or not final.get("best"):
        return math.inf
    return float(final["best"][final["selection"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norm", required=True, choices=("none", "bn_sum"))
    parser.add_argument("--trials", type=int, default=52)
    parser.add_argument("--sweep-dir", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", help="further bnrnn.train overrides")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    study, trials = sample(args.trials)
    record = []
    for batch, members in groups(trials).items():
        run_dir = args.sweep_dir / f"b{batch}"
        command = [sys.executable, "-m", "bnrnn.train", "experiment=grid_char_rnn",
                   f"model.norm={args.norm}", *args.overrides, *population_overrides(batch, members),
                   f"hydra.run.dir={run_dir}"]
        print(" ".join(command[1:]), flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:  # a crash, not a divergence: stop, as the sweeper's max_failure_rate=0
            print(f"population_grid: the batch-{batch} population failed (exit {done.returncode})",
                  file=sys.stderr)
            return done.returncode
        for t in members:
            final = json.loads((run_dir / str(t.number) / "final.json").read_text())
            study.tell(t, objective(final))
            record.append({"number": t.number, "params": t.params, "dir": str(run_dir / str(t.number)),
                           "status": final["status"], "value": objective(final)})
    record.sort(key=lambda r: r["number"])
    write_json(args.sweep_dir / "population_grid.json",
               {"norm": args.norm, "trials": record,
                "best": min(record, key=lambda r: r["value"])})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
