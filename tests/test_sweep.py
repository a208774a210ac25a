"""The PTB sweep (configs/sweep/ptb.yaml) and the launchers (configs/hydra/launcher/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.helpers import CONFIG_DIR, REPO, make_cfg


def hydra_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def sweep_jobs(command_line: list[str]) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper launches for ``-m +sweep=ptb <command_line>``: the sweep
    file's params first, the command line after them (it wins for a key given in both)."""
    cfg = hydra_cfg(["+sweep=ptb"])
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, *command_line])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return [dict(o.split("=", 1) for o in job) for job in batch]


def test_ptb_sweep_is_every_size_times_every_variant():
    jobs = sweep_jobs([])
    assert len(jobs) == 12
    assert {(j["experiment"], j["model.norm"]) for j in jobs} == {
        (s, n) for s in ("ptb_small", "ptb_medium", "ptb_large")
        for n in ("none", "bn_input", "bn_recurrent", "ln")}
    assert jobs[0]["experiment"] == "ptb_small"  # the small row runs first


def test_ptb_sweep_small_row_with_seeds():
    jobs = sweep_jobs(["experiment=ptb_small", "seed=1,2,3", "device=cpu"])
    assert len(jobs) == 12 and {j["experiment"] for j in jobs} == {"ptb_small"}
    assert sorted({j["seed"] for j in jobs}) == ["1", "2", "3"]
    assert all(j["device"] == "cpu" for j in jobs)


def test_make_population_trains_each_variant_s_seeds_as_one_population():
    """`make reproduce-ptb-small SEEDS=3 POPULATION=1`: one job per variant, each a population
    of the three seeds with one run directory per seed."""
    import shlex

    from bnrnn import population_run

    p = subprocess.run(["make", "-n", "reproduce-ptb-small", "SEEDS=3", "POPULATION=1"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    line = next(line for line in p.stdout.splitlines() if "bnrnn.train" in line)
    words = shlex.split(line)
    after = words[words.index("bnrnn.train") + 1:]  # -m +sweep=ptb <overrides>
    assert after[:2] == ["-m", "+sweep=ptb"]
    command_line = after[2:]
    jobs = sweep_jobs(command_line)
    assert len(jobs) == 4 and {j["model.norm"] for j in jobs} == {"none", "bn_input", "bn_recurrent", "ln"}
    assert all(j["population.seeds"] == "[1,2,3]" for j in jobs)
    job = [f"{k}={v}" for k, v in jobs[0].items() if not k.startswith("hydra.")]
    members = population_run.plan(make_cfg(job), job)
    assert [(m.seed, m.dir) for m in members] == [(1, "seed1"), (2, "seed2"), (3, "seed3")]


def test_sweep_directories_never_collide():
    cfg = hydra_cfg(["+sweep=ptb", "experiment=ptb_medium", "model.norm=ln", "seed=7"])
    # one job's subdir: readable, and unique within the sweep by the job number
    OmegaConf.update(cfg, "hydra.job.num", 3)
    assert cfg.hydra.sweep.subdir == "ptb_medium/ln/seed7_3"
    # two sweeps composed within the same second still get different directories (microseconds)
    dirs = {hydra_cfg(["+sweep=ptb"]).hydra.sweep.dir for _ in range(2)}
    assert len(dirs) == 2 and all(d.startswith("multirun/reproduce_ptb/") for d in dirs)


def test_launcher_configs_compose():
    slurm = hydra_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                       "hydra.launcher.timeout_min=60"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.timeout_min, slurm.gpus_per_node) == ("gpu", 60, 1)
    local = hydra_cfg(["hydra/launcher=local"]).hydra.launcher
    assert local._target_.endswith("LocalLauncher") and local.gpus_per_node == 0


def test_two_job_sweep_through_submitit_local(ptb_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "+sweep=ptb", "experiment=ptb_small", "model.norm=none,bn_input", "seed=1",
            "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}",
            f"data.root={ptb_root}", "model.hidden_size=8", "data.limit_batches=2", "data.bptt=4",
            "data.batch_size=2", "trainer.max_epochs=1", "quiet=true", "device=cpu", "threads=1"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, "-m", "bnrnn.train", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300, env=env | {"WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    finals = sorted(sweep_dir.glob("ptb_small/*/seed1_*/final.json"))
    assert [str(p.parent.relative_to(sweep_dir)) for p in finals] == [
        "ptb_small/bn_input/seed1_1", "ptb_small/none/seed1_0"]
    for path in finals:
        final = json.loads(path.read_text())
        assert final["status"] == "completed" and final["epochs_completed"] == 1
        assert final["norm"] == path.parent.parent.name
