"""Experiment loggers. ``metrics.jsonl`` is always written by the trainer; these are extra."""
from __future__ import annotations

import uuid
from pathlib import Path

from bnrnn.io import write_text


class NullLogger:
    """``logger=none``: nothing beyond the run directory."""

    def __init__(self, run_dir: str | None = None): ...

    def log_config(self, config: dict) -> None: ...

    def log(self, row: dict, step: int) -> None: ...

    def finish(self, final: dict) -> None: ...


class WandbLogger:
    """``logger=wandb``: one wandb run per bnrnn run, resumable.

    The wandb run id is kept in ``<run_dir>/wandb_id.txt`` so that ``resume=true`` continues
    the same wandb run. ``mode`` is ``online``, ``offline`` or ``disabled`` (wandb's own).
    """

    def __init__(self, run_dir: str, project: str = "bnrnn", group: str | None = None,
                 tags: list[str] | None = None, mode: str = "offline", name: str | None = None,
                 entity: str | None = None):
        import wandb

        id_file = Path(run_dir) / "wandb_id.txt"
        # our own id (wandb.util.generate_id is gone from recent wandb): 8 lowercase hex chars
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        write_text(id_file, run_id + "\n")
        self.run = wandb.init(project=project, entity=entity, group=group, tags=list(tags or []),
                              name=name, mode=mode, dir=str(run_dir), id=run_id, resume="allow")

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log(self, row: dict, step: int) -> None:
        self.run.log(row, step=step)

    def finish(self, final: dict) -> None:
        for key in ("status", "best_epoch", "epochs_completed"):
            self.run.summary[key] = final.get(key)
        for split_key in ("best", "test"):
            for k, v in (final.get(split_key) or {}).items():
                self.run.summary[f"{split_key}/{k}"] = v
        self.run.finish(exit_code=0 if final["status"] == "completed" else 1)
