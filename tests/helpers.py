"""Compose and run bnrnn configs inside a test, the way the CLI would."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from bnrnn.io import read_jsonl
from bnrnn.train import CONFIG_DIR, run

REPO = Path(__file__).resolve().parents[1]
TIME_KEYS = {"epoch_time", "wall_time", "train_tokens_per_s", "tokens_per_s"}


def make_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def train(overrides: list[str], run_dir: Path) -> tuple[float, dict, list[dict]]:
    """Run one configuration in-process; returns (objective, final.json, metrics rows)."""
    objective = run(make_cfg(overrides), run_dir)
    final = json.loads((run_dir / "final.json").read_text())
    return objective, final, read_jsonl(run_dir / "metrics.jsonl")


def cli(args: list[str], cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnrnn.train", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={"WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0",
                               **{k: v for k, v in __import__("os").environ.items()
                                  if k not in ("HYDRA_FULL_ERROR",)}})


def corrupt_copy(root: Path, dest: Path) -> Path:
    """A copy of the fixture corpus ``root`` whose training file fails its checksum: data that
    only reading it shows to be bad, so a run given it fails once it has started."""
    import shutil

    shutil.copytree(root, dest)
    train = next(dest.glob("*train.txt"))
    train.write_text(train.read_text() + "corrupt\n")
    return dest

def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def perturb_norms(layer) -> None:
    """Move a layer's γ/β off their initial values and give every batch norm random per-step
    population statistics (each step's differs, so a statistic read at the wrong step shows)."""
    import torch

    from bnrnn.nn import SeqBatchNorm

    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
        for bn in layer.modules():
            if isinstance(bn, SeqBatchNorm):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
