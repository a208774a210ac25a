"""The grid search as populations (bnrnn/population_grid.py): the sweeper's points, grouped by
batch size, each group one population whose members the grid report reads as trials."""
import json
import math
from pathlib import Path

import pytest

from bnrnn.population_grid import groups, main, population_overrides, sample
from bnrnn.report.grid import load_trials
from bnrnn.report.runs import load_runs

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "runs" / "grid"


def test_the_points_are_the_optuna_sweepers():
    """The committed reduced grid (results/runs/grid) was drawn by Hydra's Optuna sweeper; its
    trial k is the launcher's trial k, for both norms."""
    runs = load_runs(COMMITTED)
    assert runs, "results/runs/grid holds the committed reduced grid"
    _, trials = sample(max(int(r.path.name) for r in runs) + 1)
    for r in runs:
        t = trials[int(r.path.name)]
        assert (t.params["optim.lr"], t.params["optim.momentum"], t.params["data.batch_size"]) == \
               (r.config["optim"]["lr"], r.config["optim"]["momentum"], r.config["data"]["batch_size"])


def test_groups_are_by_batch_size_and_members_are_named_by_trial():
    _, trials = sample(8)
    grouped = groups(trials)
    assert sorted(t.number for ts in grouped.values() for t in ts) == list(range(8))
    for batch, members in grouped.items():
        assert {t.params["data.batch_size"] for t in members} == {batch}
        overrides = population_overrides(batch, members)
        lrs = [float(x) for x in overrides[1].split("=", 1)[1].strip("[]").split(",")]
        assert lrs == [t.params["optim.lr"] for t in members]  # the floats round-trip exactly
        assert overrides[3] == "population.member_dir=[" + ",".join(f"'{t.number}'" for t in members) + "]"


@pytest.mark.slow
def test_the_launcher_trains_each_group_as_a_population(ptb_char_root, tmp_path):
    sweep = tmp_path / "bn_sum"
    assert main(["--norm", "bn_sum", "--trials", "2", "--sweep-dir", str(sweep), "--",
                 f"data.root={ptb_char_root}", "model.hidden_size=8", "model.embedding_size=8",
                 "data.seq_len=20", "data.limit_batches=2", "data.eval_batch_size=64",
                 "trainer.max_epochs=1", "quiet=true", "device=cpu", "threads=1"]) == 0
    record = json.loads((sweep / "population_grid.json").read_text())
    assert [r["number"] for r in record["trials"]] == [0, 1]
    trials = load_trials(tmp_path)
    _, drawn = sample(2)
    assert sorted(t.point for t in trials) == sorted(
        (d.params["optim.lr"], d.params["optim.momentum"], d.params["data.batch_size"]) for d in drawn)
    for r in record["trials"]:
        final = json.loads((Path(r["dir"]) / "final.json").read_text())
        assert r["value"] == (final["best"]["valid_ce"] if final["status"] == "completed" else math.inf)
