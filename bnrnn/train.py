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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnrnn.engine import Trainer, TrainerConfig
from bnrnn.io import git_revision

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
    objective), ``inf`` if the run diverged."""
    run_dir = Path(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    device = resolve_device(cfg.device)

    data = instantiate(cfg.data)
    model = instantiate(cfg.model, **data.dims).to(device)
    optimizer = instantiate(cfg.optim, params=model.parameters())
    scheduler = instantiate(cfg.schedule, optimizer=optimizer) if cfg.schedule else None
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = instantiate(cfg.logger, run_dir=str(run_dir))
    logger.log_config(resolved)
    trainer_cfg = TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    if cfg.quiet:
        trainer_cfg.progress = False
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    info = {
        "name": cfg.name,
        "seed": cfg.seed,
        "norm": cfg.model.get("norm"),
        "protocol": (cfg.get("protocol") or {}).get("name"),  # PTB: configs/protocol/
        "limit_batches": cfg.data.get("limit_batches"),
        # the job's own overrides: a multirun's argv holds the sweep lists, not this job's values
        "command": " ".join(["python -m bnrnn.train", *overrides]),
        "overrides": overrides,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # the code the run starts with (a checkout may move on while a long run trains); a copy of
    # the tree without .git (e.g. a lent GPU machine) is told its revision by BNRNN_GIT_REVISION
    info["git_revision"] = git_revision()
    if info["git_revision"] == "unknown":
        info["git_revision"] = os.environ.get("BNRNN_GIT_REVISION", "unknown")
    trainer = Trainer(model=model, data=data, optimizer=optimizer, scheduler=scheduler,
                      config=trainer_cfg, run_dir=run_dir, device=device, logger=logger,
                      info=info, resolved_config=resolved)
    if cfg.resume and trainer.try_resume():
        log.info("resumed %s at epoch %d", run_dir, trainer.epoch)
    log.info("%s: %d parameters on %s, run dir %s", cfg.name,
             sum(p.numel() for p in model.parameters()), device, run_dir)
    final = trainer.fit()
    log.info("%s finished: %s, best %s", cfg.name, final["status"],
             {k: v for k, v in (final["best"] or {}).items() if k.startswith("valid")})
    if final["status"] == "diverged" or final["best"] is None:
        return float("inf")
    return float(final["best"][final["selection"]])


# configs/ sits beside the package (editable install); an absolute path works for `python -m` too.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    if cfg.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    return run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    # Launchers that pickle the task function (hydra/launcher=submitit_*) need the importable
    # bnrnn.train.main, not this __main__ copy (cloudpickle cannot serialize it by value).
    from bnrnn.train import main as _main

    _main()
