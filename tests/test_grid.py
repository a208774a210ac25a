"""The appendix grid search end to end: Optuna sweeps through the CLI, offline on CPU, paired
points for both norms, diverged trials kept, and the Table 3 analogue built from the trials."""
import csv
import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bnrnn.report.grid import NAME, PROTOCOL, Trial, build, paired, reductions
from bnrnn.report.runs import Run, RunError, load_runs
from tests.helpers import CONFIG_DIR, cli

TINY = ["experiment=grid_char_rnn", "+hparams_search=grid", "model.hidden_size=8",
        "model.embedding_size=8", "data.seq_len=20", "data.limit_batches=2",
        "data.eval_batch_size=64", "trainer.max_epochs=1", "quiet=true", "device=cpu", "threads=1"]


def sweep(root, norm, out, *extra):
    p = cli(["-m", *TINY, f"data.root={root}", f"model.norm={norm}", f"hydra.sweep.dir={out}", *extra],
            timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    return OmegaConf.load(out / "optimization_results.yaml")


def test_search_space_is_the_papers():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=grid_char_rnn", "+hparams_search=grid"],
                      return_hydra_config=True)
    sw = cfg.hydra.sweeper
    assert sw.n_trials == 52 and sw.storage is None and sw.direction == "minimize"
    assert sw.sampler._target_ == "optuna.samplers.RandomSampler" and sw.sampler.seed is not None
    assert dict(sw.params) == {"optim.lr": "tag(log, interval(1e-4, 1.0))",
                               "optim.momentum": "choice(0.5, 0.8, 0.9, 0.95, 0.995)",
                               "data.batch_size": "choice(32, 64, 128)"}
    assert cfg.trainer.max_epochs == 20 and cfg.optim._target_ == "torch.optim.SGD"


def test_sweep_both_norms_then_table(ptb_char_root, tmp_path):
    root = ptb_char_root
    runs = tmp_path / "runs"
    base = sweep(root, "none", runs / "none", "hydra.sweeper.n_trials=3")
    bn = sweep(root, "bn_sum", runs / "bn_sum", "hydra.sweeper.n_trials=3")
    # a third sweep with another sampler seed whose trial diverges in epoch 2 (lr -> inf):
    # Optuna takes the inf objective, the sweep goes on, the trial is kept as diverged
    div = sweep(root, "none", runs / "diverged", "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.seed=7",
                "trainer.max_epochs=2", "schedule=decay_after", "schedule.decay=inf", "schedule.after_epoch=1")
    assert div.best_value == math.inf and math.isfinite(base.best_value) and math.isfinite(bn.best_value)

    trials = [t for t in load_runs(runs) if t.name == NAME]
    assert sorted(r.status for r in trials) == ["completed"] * 6 + ["diverged"]
    points = {n: sorted((r.config["optim"]["lr"], r.config["optim"]["momentum"], r.config["data"]["batch_size"])
                        for r in trials if r.norm == n and r.status == "completed") for n in ("none", "bn_sum")}
    assert points["none"] == points["bn_sum"]  # the same seeded sampler: paired points
    assert len(set(points["none"])) == 3 and all(1e-4 <= p[0] <= 1 for p in points["none"])
    # the sweep objective is each trial's best valid CE
    assert base.best_value == min(r.final["best"]["valid_ce"] for r in trials
                                  if r.norm == "none" and r.status == "completed")

    out = tmp_path / "results"
    written = build(runs, out, "python scripts/make_tables.py")
    assert sorted(p.name for p in written) == ["grid.csv", "grid.md", "grid_curves.png", "grid_lr.png"]
    md = (out / "grid.md").read_text()
    assert "**Reduced run**" in md and "3 trials for batch norm" in md and "4 trials for baseline" in md
    assert "1/2 epochs per trial (paper: 20)" in md and "first 2 batches" in md and "hidden_size = 8" in md
    assert "| best baseline, paper | 1.05 | 1.10 | 0.42 | 0.95 | 32 |" in md
    assert "| best batch norm (eq. 17), paper | 1.07 | 1.11 | 3.71e-04 | 0.995 | 128 |" in md
    assert "3 / 1 / 0" in md and "3 / 0 / 0" in md  # converged / diverged / other
    assert "3 points were run for both norms" in md and "1 trials have no partner" in md
    assert "diverged (epoch 2)" in md
    rows = list(csv.DictReader((out / "grid.csv").open()))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"completed", "diverged"}
    best_bn = min(float(r["valid_ce"]) for r in rows if r["norm"] == "bn_sum")
    assert f"{best_bn:.2f}" in md.split("best batch norm (eq. 17), bnrnn |")[1].split("\n")[0]
    for png in ("grid_lr.png", "grid_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # regenerating from the same runs gives byte-identical files
    before = {p.name: p.read_bytes() for p in written}
    build(runs, out, "python scripts/make_tables.py")
    assert {p.name: p.read_bytes() for p in written} == before


def _run(tmp_path, i, norm, lr, *, epochs=20, limit=None, status="completed", valid=1.5, completed=None):
    config = {"name": NAME, "optim": {"lr": lr, "momentum": 0.9}, "data": {"batch_size": 32, "seq_len": 100},
              "model": {"norm": norm, "embedding_size": 250, "hidden_size": 250, "num_layers": 3}}
    completed = epochs if completed is None else completed
    best = {"epoch": completed, "train_ce": valid - 0.1, "valid_ce": valid}
    final = {"name": NAME, "norm": norm, "status": status, "max_epochs": epochs, "epochs_completed": completed,
             "limit_batches": limit, "best": best, "best_epoch": epochs}
    return Run(path=tmp_path / norm / str(i), config=config, final=final, metrics=[best])


def test_full_protocol_is_not_reduced_and_duplicates_are_refused(tmp_path):
    trials = [Trial(_run(tmp_path, i, n, 10 ** (-4 + i / 13)), n, 10 ** (-4 + i / 13), 0.9, 32)
              for n in ("none", "bn_sum") for i in range(PROTOCOL["trials"])]
    assert reductions(trials) == []
    rows, unmatched = paired(trials)
    assert len(rows) == 52 and not unmatched
    short = [Trial(_run(tmp_path, 0, "none", 0.1, epochs=2, limit=5), "none", 0.1, 0.9, 32)]
    assert any("2 epochs per trial" in r for r in reductions(short))
    assert any("first 5 batches" in r for r in reductions(short))
    with pytest.raises(RunError, match="collected twice"):
        paired(trials + trials[:1])
    # a trial the time box stopped after 8 of its 20 epochs is a reduced protocol too, and a
    # diverged trial's fewer epochs are its outcome, not a reduction
    boxed = [Trial(_run(tmp_path, 0, "none", 0.1, completed=8), "none", 0.1, 0.9, 32),
             Trial(_run(tmp_path, 1, "none", 0.2, completed=3, status="diverged"), "none", 0.2, 0.9, 32)]
    assert reductions(trials + boxed) == ["1 trial stopped early by the time box (trainer.max_time) "
                                          "after 8 epochs"]


def test_grid_md_lists_every_setting_the_appendix_leaves_open():
    from bnrnn.config import ConfigError, validate
    from bnrnn.report import grid
    from tests.helpers import make_cfg

    cfg = validate(make_cfg(["experiment=grid_char_rnn"]))
    lines = "\n".join(grid._unstated())
    assert "## What the appendix does not state" in lines
    for item in cfg["paper"]["unstated"]:
        assert f"| {item['setting']} | {item['value']} |" in lines
    with pytest.raises(ConfigError, match="paper.unstated"):
        validate(make_cfg(["experiment=grid_char_rnn", "paper.unstated=[{setting: x}]"]))
