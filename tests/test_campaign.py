"""scripts/campaign.sh: the jobs of one device call side by side, packed into one archive."""
import json
import os
import subprocess
import tarfile

import pytest

from tests.helpers import REPO, corrupt_copy

TINY = ["data.limit_batches=3", "model.hidden_size=8", "trainer.max_epochs=1", "device=cpu", "threads=1"]


def campaign(tmp_path, jobs: str, *overrides):
    (tmp_path / "jobs.txt").write_text(jobs)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CAMPAIGN_DIR": str(tmp_path / "work"),
           "NO_MPS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([str(REPO / "scripts" / "campaign.sh"), str(tmp_path / "jobs.txt"), "600",
                           *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_campaign_runs_jobs_side_by_side_and_packs_small_files(tmp_path, ptb_root):
    jobs = ("# Table 2, tiny\n"
            "!prepare experiment=ptb_small\n"
            "small/none experiment=ptb_small model.norm=none seed=1\n"
            "small/bn_input experiment=ptb_small model.norm=bn_input seed=2\n")
    p = campaign(tmp_path, jobs, f"data.root={ptb_root}", *TINY)
    assert p.returncode == 0, p.stderr + p.stdout
    with tarfile.open(tmp_path / "out" / "runs.tgz") as tar:
        names = set(tar.getnames())
        finals = {n: json.load(tar.extractfile(n)) for n in names if n.endswith("final.json")}
    assert set(finals) == {"runs/small/none/final.json", "runs/small/bn_input/final.json"}
    assert all(f["status"] == "completed" for f in finals.values())
    assert all("trainer.max_time=600" in f["command"] for f in finals.values())  # the safety net
    assert all(f["concurrent_runs"] == 2 for f in finals.values())  # !prepare and comments are not runs
    assert not any(n.endswith(".pt") for n in names)  # checkpoints never travel back
    assert "runs/small/none/.hydra/config.yaml" in names and "runs/small/none.log" in names
    assert "prepare_data: bnrnn.data.ptb.PTBWordData ready" in p.stdout  # built once, first


def test_a_population_job_writes_each_member_as_an_ordinary_run(tmp_path, ptb_root):
    """A job line may train several seeds as one population (scripts/campaigns/ptb_seeds.txt):
    each member comes back as its own run directory, named by population.member_dir."""
    (tmp_path / "population.seeds=2").write_text("")  # a file the overrides must not glob to
    jobs = "small/none experiment=ptb_small model.norm=none population.seeds=[2,3] population.member_dir='seed{seed}'\n"
    p = campaign(tmp_path, jobs, f"data.root={ptb_root}", *TINY)
    assert p.returncode == 0, p.stderr + p.stdout
    with tarfile.open(tmp_path / "out" / "runs.tgz") as tar:
        finals = {n: json.load(tar.extractfile(n)) for n in tar.getnames() if n.endswith("/final.json")}
    members = {n: f for n, f in finals.items() if "/seed" in n}
    assert sorted(members) == ["runs/small/none/seed2/final.json", "runs/small/none/seed3/final.json"]
    assert [members[n]["seed"] for n in sorted(members)] == [2, 3]
    assert all(f["status"] == "completed" for f in members.values())


def test_campaign_stops_before_any_job_when_preparing_fails(tmp_path, ptb_root):
    # a corrupt corpus: only building the data finds it (a bad value is refused by the check)
    corrupt = corrupt_copy(ptb_root, tmp_path / "corrupt")
    p = campaign(tmp_path, "!prepare experiment=ptb_small\nsmall/none experiment=ptb_small\n",
                 f"data.root={corrupt}", *TINY)
    assert p.returncode == 1 and "checksum mismatch" in p.stderr and "preparing data failed" in p.stderr
    assert not any((tmp_path / "work" / "runs").iterdir())


def test_a_malformed_line_stops_the_campaign_before_anything_starts(tmp_path, ptb_root):
    """Each bad line is named (file:line, what, the fix) before any data is prepared or any job
    starts: a line without its run name, a misspelled experiment, a bad value, a reused run
    name, a population list of the wrong length, a grid job without its norm."""
    jobs = ("!prepare experiment=ptb_small data.bptt=0\n"
            "small/none experiment=ptb_small model.norm=none seed=1\n"
            "experiment=ptb_small model.norm=bn_input\n"
            "small/ln experiment=ptb_smal\n"
            "small/none experiment=ptb_small model.norm=ln\n"
            "small/pop experiment=ptb_small population.seeds=[1,2] population.optim.lr=[1]\n"
            "grid/bn !grid\n")
    p = campaign(tmp_path, jobs, f"data.root={ptb_root}", *TINY)
    assert p.returncode == 2, p.stderr + p.stdout
    problems = [line for line in p.stderr.splitlines() if line.strip()]
    jobs_file = tmp_path / "jobs.txt"
    assert [line.split(": ", 2)[1] for line in problems[:-1]] == [
        f"{jobs_file}:{n}" for n in (1, 3, 4, 5, 6, 7)]
    assert "data.bptt=0: must be an integer >= 1" in problems[0]
    assert "the run name 'experiment=ptb_small' is an override" in problems[1]
    assert "Could not find 'experiment/ptb_smal'" in problems[2] and "ptb_small" in problems[2]
    assert "is also line 2's" in problems[3]
    assert "population.optim.lr=[1]: has 1 values, population.seeds 2" in problems[4]
    assert "with norm one of none, bn_sum" in problems[5]
    assert problems[-1] == f"campaign: 6 problem(s) in {jobs_file}; no job was started"
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_a_time_box_that_is_not_seconds_stops_the_campaign(tmp_path):
    (tmp_path / "jobs.txt").write_text("small/none experiment=ptb_small\n")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CAMPAIGN_DIR": str(tmp_path / "work"),
           "NO_MPS": "1"}
    p = subprocess.run([str(REPO / "scripts" / "campaign.sh"), str(tmp_path / "jobs.txt"), "8m"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "campaign: MAX_TIME_S=8m: must be a number of seconds > 0" in p.stderr
    assert not (tmp_path / "work").exists()


def test_campaign_refuses_to_reuse_its_work_directory(tmp_path):
    (tmp_path / "work" / "runs").mkdir(parents=True)
    p = campaign(tmp_path, "a experiment=ptb_small\n")
    assert p.returncode == 2 and "exists" in p.stderr


def test_every_prepared_campaign_passes_its_own_check(ptb_root, ptb_char_root):
    """The job lists in scripts/campaigns/ are only ever run on a lent GPU: each must pass the
    check campaign.sh runs first there (scripts/check_campaign.py: every job, population member
    and !prepare line composed and validated, its data files found), with the data root its
    header names (characters for the grid, words otherwise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_campaign", REPO / "scripts" / "check_campaign.py")
    check_campaign = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_campaign)
    files = sorted((REPO / "scripts" / "campaigns").glob("*.txt"))
    assert files
    for path in files:
        root = ptb_char_root if "!grid" in path.read_text() else ptb_root
        assert check_campaign.check(path, "480", [f"data.root={root}"]) == [], path.name


@pytest.mark.slow
def test_a_grid_job_trains_its_trials_as_populations(tmp_path, ptb_char_root):
    env_trials = {"GRID_TRIALS": "3"}
    (tmp_path / "jobs.txt").write_text("grid/none !grid none\n")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "CAMPAIGN_DIR": str(tmp_path / "work"),
           "NO_MPS": "1", "WANDB_MODE": "disabled", **env_trials}
    p = subprocess.run([str(REPO / "scripts" / "campaign.sh"), str(tmp_path / "jobs.txt"), "600",
                        f"data.root={ptb_char_root}", "data.limit_batches=2", "model.hidden_size=8",
                        "model.embedding_size=8", "trainer.max_epochs=1", "device=cpu", "threads=1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + p.stdout
    with tarfile.open(tmp_path / "out" / "runs.tgz") as tar:
        names = set(tar.getnames())
    assert "runs/grid/none/population_grid.json" in names
    assert sum(n.endswith("final.json") for n in names) >= 3  # one ordinary run per trial
