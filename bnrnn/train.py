"""Entry point: ``python -m bnrnn.train experiment=ptb_small [overrides]``.

The only module that reads Hydra, the environment or the command line: it composes the
config, builds the objects from their ``_target_`` and hands them to :class:`bnrnn.engine.Trainer`.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnrnn import population_run, rundir
from bnrnn.checkpoint import CheckpointError
from bnrnn.config import CONFIG_DIR as _CONFIG_DIR
from bnrnn.config import ConfigError, check_data_files, check_device, deviations, validate, validate_data
from bnrnn.engine import Interrupted, Trainer, TrainerConfig
from bnrnn.io import git_revision, write_json

log = logging.getLogger("bnrnn")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def run(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train one configuration in ``run_dir``; returns the best validation metric (the sweep
    objective), ``inf`` if the run diverged.

    Before any work, ``run_dir`` is claimed (``bnrnn.rundir``): a directory that holds a run is
    refused unless ``resume=true`` with an unchanged configuration. A failure after that is
    written down (traceback in ``train.log``, ``final.json`` status ``failed``) and re-raised,
    except that a resume failing before the run has continued from its checkpoint leaves the
    run's record (``final.json``, ``.hydra/``) as it was; a SIGINT/SIGTERM ends the run
    ``interrupted`` and raises :class:`Interrupted`."""
    if population_run.requested(cfg):  # population.seeds=[...]: M runs in one process
        return population_run.run(cfg, run_dir)
    cfg = population_run.without_population(cfg)
    validate(cfg)  # every key's type and range, before the run directory or the data is touched
    run_dir = Path(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    device = resolve_device(cfg.device)
    check_device(resolved, device)
    check_data_files(resolved)  # data.root and the cache, before the run directory is claimed
    lock, resume_state = rundir.claim(run_dir, bool(cfg.resume), resolved, device)
    try:
        if resume_state is not None and \
                (done := rundir.nothing_to_resume(run_dir, resume_state, cfg.trainer.max_epochs)):
            log.info("%s is complete (%d epochs): nothing to resume; its record stays as it is",
                     run_dir, done.get("epochs_completed"))
            return objective(done)
        return _run(cfg, run_dir, resolved, device, resume_state)
    finally:
        lock.release()


def objective(final: dict) -> float:
    """A run's sweep objective: its best validation metric, ``inf`` where it has none
    (diverged, failed, or stopped before its first evaluation)."""
    if final.get("status") == "diverged" or not final.get("best"):
        return float("inf")
    return float(final["best"][final["selection"]])


def _run(cfg: DictConfig, run_dir: Path, resolved: dict, device: torch.device,
         resume_state: dict | None) -> float:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    overrides = rundir.defining(overrides)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if resume_state is None:
        rundir.write_hydra_files(run_dir, rundir.as_recorded(cfg), overrides, hydra_cfg)
    info = run_info(cfg, resolved, overrides)
    if resume_state is not None:
        info = rundir.continued(info, run_dir, resume_state["epoch"])
    trainer, continuing = None, resume_state is None
    try:
        data = build_data(cfg.data)
        validate_data(cfg, data)  # batch sizes against the splits' sizes, before any step
        model = instantiate(cfg.model, **data.dims).to(device)
        optimizer = instantiate(cfg.optim, params=model.parameters())
        scheduler = instantiate(cfg.schedule, optimizer=optimizer) if cfg.schedule else None
        logger = instantiate(cfg.logger, run_dir=str(run_dir))
        logger.log_config(resolved)
        trainer_cfg = TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
        if cfg.quiet:
            trainer_cfg.progress = False
        trainer = Trainer(model=model, data=data, optimizer=optimizer, scheduler=scheduler,
                          config=trainer_cfg, run_dir=run_dir, device=device, logger=logger,
                          info=info, resolved_config=resolved)
        if resume_state is not None:
            trainer.resume_from(resume_state)
            # the run goes on from here: only now may this invocation rewrite its record
            rundir.write_hydra_files(run_dir, rundir.as_recorded(cfg), overrides, hydra_cfg)
            continuing = True
            log.info("resumed %s at epoch %d", run_dir, trainer.epoch)
        log.info("%s: %d parameters on %s, run dir %s", cfg.name,
                 sum(p.numel() for p in model.parameters()), device, run_dir)
        final = trainer.fit()
    except ConfigError:
        raise  # a refusal before any step, not a failed run: nothing to record
    except Exception as e:
        log.exception("%s failed in %s", cfg.name, run_dir)  # the traceback goes to train.log
        if continuing:
            _record_failure(run_dir, trainer, info, e)
        else:  # a resume that failed before the run went on: the run is where its record says
            log.error("%s: the resume failed before the run continued; its final.json and "
                      ".hydra/ stay as they were", run_dir)
        raise
    log.info("%s finished: %s, best %s", cfg.name, final["status"],
             {k: v for k, v in (final["best"] or {}).items() if k.startswith("valid")})
    if final["status"] == "interrupted" and trainer.signum is not None:
        raise Interrupted.by(trainer.signum)
    return objective(final)


def build_data(data_cfg: DictConfig):
    """The data object of ``data_cfg``; a :class:`ConfigError` it raises (a corpus too small for
    data.seq_len) comes out as itself, not wrapped in Hydra's InstantiationException, so it is
    reported in one line as a refusal, not recorded as a failed run."""
    try:
        return instantiate(data_cfg)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def run_info(cfg: DictConfig, resolved: dict, overrides: list[str]) -> dict:
    """The facts of a run that final.json records beside its results."""
    info = {
        "name": cfg.name,
        "seed": cfg.seed,
        "norm": cfg.model.get("norm"),
        "protocol": (cfg.get("protocol") or {}).get("name"),  # PTB: configs/protocol/
        "limit_batches": cfg.data.get("limit_batches"),
        # the published protocol (the experiment's paper:) and each way this run departs from it
        "paper": (cfg.get("paper") or {}).get("source"),
        "deviations": deviations(resolved),
        "substitutes": list((cfg.get("paper") or {}).get("substitutes") or []),
        # the job's own overrides: a multirun's argv holds the sweep lists, not this job's values
        "command": " ".join(["python -m bnrnn.train", *overrides]),
        "overrides": overrides,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info["scaled"] = bool(info["deviations"])
    # the code the run starts with (a checkout may move on while a long run trains); a copy of
    # the tree without .git (e.g. a lent GPU machine) is told its revision by BNRNN_GIT_REVISION
    info["git_revision"] = git_revision()
    if info["git_revision"] == "unknown":
        info["git_revision"] = os.environ.get("BNRNN_GIT_REVISION", "unknown")
    # runs started side by side on one device (scripts/campaign.sh says how many): their times
    # are shared-device times; None where nothing said so
    concurrent = os.environ.get("BNRNN_CONCURRENT_RUNS")
    info["concurrent_runs"] = int(concurrent) if concurrent and concurrent.isdigit() else None
    return info


def _record_failure(run_dir: Path, trainer: Trainer | None, info: dict, error: Exception) -> None:
    """final.json status ``failed`` with the error; the last good checkpoint stays as it was.
    Best effort: when even this write fails (a full disk), the log says so."""
    message = f"{type(error).__name__}: {error}"
    try:
        if trainer is not None:
            trainer.write_final("failed", message, None)
        else:
            write_json(run_dir / "final.json", {"status": "failed", "error": message,
                                                "epochs_completed": 0} | info)
    except OSError as e:
        log.error("could not record the failure in %s/final.json: %s", run_dir, e)


# an absolute path, so `python -m bnrnn.train` works from any directory
CONFIG_DIR = str(_CONFIG_DIR)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    """The CLI task: exit 2 with one line for a run directory or checkpoint that cannot be used,
    128 + signal for an interrupted run (a multirun stops there too: Hydra lets SystemExit out)."""
    if cfg.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return run(cfg, HydraConfig.get().runtime.output_dir)
    except (rundir.RunDirError, CheckpointError, ConfigError) as e:
        print(f"bnrnn: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as e:
        log.warning("interrupted (%s): final.json says so; resume=true continues from the last epoch", e)
        raise SystemExit(128 + e.signum) from None


if __name__ == "__main__":
    # Launchers that pickle the task function (hydra/launcher=submitit_*) need the importable
    # bnrnn.train.main, not this __main__ copy (cloudpickle cannot serialize it by value).
    from bnrnn.train import main as _main

    _main()
