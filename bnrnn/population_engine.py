"""The training loop of a population: M runs of one shape in one process, each recorded as an
ordinary run.

:class:`PopulationTrainer` steps a :class:`~bnrnn.models.population.PopulationLM` with
:class:`~bnrnn.population.PopulationSGD` or :class:`~bnrnn.population.PopulationAdam`,
per-member clipping and schedules, and keeps for each member what :class:`bnrnn.engine.Trainer`
keeps for a single run — its ``metrics.jsonl`` rows,
best epoch and ``checkpoints/best.pt`` (member m as an ordinary model's state), ``final.json``
(written by the single run's own ``Trainer.write_final``) — in the member's own run directory.
After training, each completed member is tested at its best weights; the evaluations a single
run makes then (``final_reestimate``, ``stream_splits``, ``eval_lengths``) are made by the
single run's own ``Trainer.test_at_best`` on the member as an ordinary model, one at a time.

Divergence is the single run's rule applied to each member alone (non-finite loss, a training
stretch above chance + margin, non-finite final metrics): the member is frozen
(:class:`~bnrnn.population.FrozenMembers`), its ``final.json`` says ``diverged`` with the epoch,
and the others go on unchanged. The whole population is checkpointed in
``<population dir>/checkpoints/last.pt`` after every epoch, with every member's dropout stream
(``bnrnn.nn.streams``); resuming from it continues every member as an uninterrupted population
run would.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from bnrnn import checkpoint
from bnrnn.engine import (Check, Diverged, EpochLoop, Interrupted, StopSignals, Trainer,
                          TrainerConfig, _metrics_only, _non_finite, divergence, load_best,
                          restore_best)
from bnrnn.io import read_jsonl, write_jsonl
from bnrnn.models.population import PopulationLM
from bnrnn.nn import SeqBatchNorm
from bnrnn.population import (FrozenMembers, PopulationOptimizer, PopulationSchedule,
                              clip_grad_norm_per_member)

log = logging.getLogger("bnrnn")


@dataclass
class MemberRun:
    """One member's record, as a single run's Trainer keeps it."""

    run_dir: Path
    info: dict
    logger: object = None
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    status: str = "running"  # running | diverged | completed | interrupted
    error: str | None = None
    stopped_step: int | None = None  # a diverged member's step count when it stopped
    test: dict | None = None  # test metrics at the best epoch, once tested
    # the evaluations after training at the best weights (Trainer.test_at_best's extra:
    # <split>_<metric>_stream, <test>_<metric>_by_length, reestimated)
    extra: dict = field(default_factory=dict)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


class _MemberModel:
    """What ``Trainer.write_final`` reads of a model, for member m: ``selection``, ``parameters``
    and ``modules`` (whether it has batch norms: the population's are every member's)."""

    def __init__(self, population: PopulationLM, m: int):
        self.selection, self._population, self._m = population.selection, population, m

    def parameters(self):
        return (p[self._m] for p in self._population.parameters())

    def modules(self):
        return self._population.modules()


def _member_trainer(trainer: "PopulationTrainer", m: int) -> Trainer:
    """Member m seen as a single run's :class:`Trainer` (its record, a view of its parameters),
    so that its ``final.json`` is written by ``Trainer.write_final`` itself: the same fields, the same
    rules, whatever they become."""
    member = trainer.members[m]
    view = Trainer.__new__(Trainer)
    view.__dict__.update(
        cfg=trainer.cfg, step=trainer.step if member.stopped_step is None else member.stopped_step,
        elapsed=trainer.elapsed, device=trainer.device,
        history=member.history, best=member.best, info=member.info, run_dir=member.run_dir,
        ckpt_dir=member.ckpt_dir, model=_MemberModel(trainer.model, m), data=trainer.data,
        optimizer=None, scheduler=None, logger=None)
    return view


class PopulationTrainer(EpochLoop):
    """Train every member of ``model`` (module doc). ``clip[m]``: member m's gradient-norm limit
    (None: not clipped); ``config.clip_grad_norm`` is not used."""

    def __init__(self, *, model: PopulationLM, data, optimizer: PopulationOptimizer,
                 schedule: PopulationSchedule, clip: list[float | None], config: TrainerConfig,
                 run_dir: str | Path, members: list[MemberRun], device: torch.device,
                 resolved_config: dict | None = None):
        self.model, self.data, self.optimizer, self.schedule = model, data, optimizer, schedule
        self.clip, self.cfg, self.device = clip, config, device
        self.M = model.population
        if len(members) != self.M or len(clip) != self.M:
            raise ValueError(f"PopulationTrainer: {len(members)} member records and {len(clip)} "
                             f"clip limits for a population of {self.M}")
        self.members = members
        self.frozen = FrozenMembers(model, optimizer)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.resolved_config = resolved_config or {}
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.last_epoch_time: float | None = None  # max_time: will another epoch fit?
        self.signum = None

    def live(self) -> list[int]:
        return [m for m, r in enumerate(self.members) if r.status == "running"]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "frozen": self.frozen.state_dict(),
            "members": [{"best": r.best, "status": r.status, "error": r.error,
                         "diverged_epoch": r.info.get("diverged_epoch"),
                         "stopped_step": r.stopped_step} for r in self.members],
            "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
            "last_epoch_time": self.last_epoch_time,
            "rng": checkpoint.rng_state(),
            "streams": None if self.model.streams is None else self.model.streams.state_dict(),
            "config": self.resolved_config,
        }

    def resume_from(self, state: dict) -> None:
        """Continue from the population's ``last.pt``; each member's rows after it are dropped."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.frozen.load_state_dict(state["frozen"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.last_epoch_time = state["last_epoch_time"]
        for r, saved in zip(self.members, state["members"]):
            r.best, r.status, r.error = saved["best"], saved["status"], saved["error"]
            if saved["diverged_epoch"] is not None:
                r.info["diverged_epoch"] = saved["diverged_epoch"]
            r.stopped_step = saved.get("stopped_step")  # absent from checkpoints written before it
            r.history = [row for row in read_jsonl(r.run_dir / "metrics.jsonl")
                         if row["epoch"] <= self.epoch]
            write_jsonl(r.run_dir / "metrics.jsonl", r.history)
        checkpoint.set_rng_state(state["rng"])
        self._resume_streams(state.get("streams"))
        for m, r in enumerate(self.members):
            restore_best(r.ckpt_dir / "best.pt", r.best, self.epoch, self._member_state(m))

    def _resume_streams(self, saved: dict | None) -> None:
        """Each member's dropout stream where the checkpoint left it. A checkpoint of another
        kind of device (or one written before populations had streams) cannot continue them:
        the streams go on from where this run's build left them, and the masks from here on
        are no longer the single runs' (said once, in the log)."""
        streams = self.model.streams
        if streams is None:
            return
        if saved is not None and saved["device"] == streams.device.type:
            streams.load_state_dict(saved)
            return
        where = "has no member streams" if saved is None else f"was written on {saved['device']}"
        log.warning("resume: the checkpoint %s; the members' dropout streams restart from their "
                    "seeds on %s, so their masks from here on are not their single runs'",
                    where, streams.device)

    # ------------------------------------------------------------------ divergence
    def _diverge(self, m: int, message: str) -> None:
        """Member m has diverged: frozen, and its final.json says so (with the epoch)."""
        r = self.members[m]
        if r.status != "running":
            return
        r.status, r.error = "diverged", message
        r.info["diverged_epoch"] = self.epoch
        r.stopped_step = self.step
        self.frozen.freeze(m)
        self.write_final(m)

    # ------------------------------------------------------------------ loops
    @property
    def shape(self) -> tuple[int]:
        return (self.M,)

    @property
    def label(self) -> str:
        return f" ({self.M} members)"

    def _update(self, out) -> None:
        self.frozen.restore()  # a frozen member's statistics stay as they were
        self.optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        live = self.live()
        if any(self.clip[m] for m in live):
            clip_grad_norm_per_member(self.model.parameters(), self.clip, self.M, live)
        self.optimizer.step()
        self.step += 1

    def _check(self, split: str, now: Check, chance: float | None, bar) -> bool:
        """Each running member's divergence rule; True (end the pass) once none is left."""
        totals, counts, windows = now.total.tolist(), now.count.tolist(), now.window.tolist()
        for m in self.live():
            why = divergence(split, totals[m] / counts[m], windows[m], chance,
                             self.cfg.divergence_margin, self.epoch, self.step)
            if why is not None:
                self._diverge(m, why)
        if not self.live():
            return True
        bar.set_postfix({"live": len(self.live()),
                         "loss": f"{min(totals[m] / counts[m] for m in self.live()):.4g}"},
                        refresh=False)
        return False

    def _results(self, split: str, now: Check, sums: dict[str, Tensor]) -> dict[int, dict]:
        """{member: metrics} for the members still running after the pass."""
        totals, counts = now.total.tolist(), [int(c) for c in now.count.tolist()]
        sums_host = {k: v.tolist() for k, v in sums.items()}
        out = {}
        for m in self.live():
            if not math.isfinite(totals[m]):
                self._diverge(m, f"non-finite {split} loss at epoch {self.epoch}, step {self.step}")
                continue
            member = {"loss_sum": totals[m], "count": counts[m]} | {k: v[m] for k, v in sums_host.items()}
            out[m] = self.model.metrics(member) | {"tokens_per_s": counts[m] / now.seconds,
                                                   "seconds": now.seconds}
        return out

    def evaluate(self, split: str) -> dict[int, dict]:
        """Each running member's metrics on ``split`` (see ``Trainer.evaluate``)."""
        if self.cfg.reestimate_batches:
            self.reestimate_statistics(self.cfg.reestimate_batches)
        out = {m: _metrics_only(v) for m, v in self.run_epoch(split, train=False).items()}
        if self.cfg.eval_batch_stats and any(isinstance(x, SeqBatchNorm) for x in self.model.modules()):
            batch = self.run_epoch(split, train=False, batch_stats=True)
            for m in list(out):
                if m in batch:
                    out[m] |= {f"batchstat_{k}": v for k, v in _metrics_only(batch[m]).items()}
                else:
                    del out[m]
        return {m: v for m, v in out.items() if self.members[m].status == "running"}

    def reestimate_statistics(self, n_batches: int) -> None:
        self._reestimate(n_batches)
        self.frozen.restore()

    def fit(self) -> list[dict]:
        """Train to ``max_epochs``; returns every member's ``final.json``."""
        interrupted = None
        # a signal interrupts the run cleanly (between its epochs' records, never inside them)
        with StopSignals() as self._signals:
            try:
                while self.epoch < self.cfg.max_epochs and self.live():
                    # as a single run counts it: epochs completed (its metrics rows)
                    if self.cfg.stop_after_epochs is not None and self.epoch >= self.cfg.stop_after_epochs:
                        raise Interrupted(f"stop_after_epochs={self.cfg.stop_after_epochs} reached")
                    if self._out_of_time():
                        break
                    self._train_one_epoch()
            except (KeyboardInterrupt, Interrupted) as e:
                interrupted = str(e) or type(e).__name__
                self.signum = getattr(e, "signum", signal.SIGINT)
        live = self.live()
        if interrupted is not None:
            for m in live:
                self.members[m].status, self.members[m].error = "interrupted", interrupted
        else:
            tested = self.test_at_best([m for m in live if self.members[m].best is not None])
            for m in live:
                r = self.members[m]
                if r.status != "running":  # diverged in its final evaluation
                    continue
                r.status = "completed"
                r.test, r.extra = tested.get(m, (None, {}))
                if bad := _non_finite(r.best, r.test, r.extra):
                    r.status, r.error = "diverged", f"non-finite final metrics: {', '.join(bad)}"
        finals = []
        for m, r in enumerate(self.members):
            final = self.write_final(m)
            if r.logger:
                r.logger.finish(final)
            finals.append(final)
        return finals

    def _out_of_time(self) -> bool:
        if self.cfg.max_time is None or self.last_epoch_time is None:
            return False
        if self.elapsed + self.last_epoch_time <= self.cfg.max_time:
            return False
        reason = (f"max_time={self.cfg.max_time:g}s: {self.elapsed:.0f}s used, an epoch takes "
                  f"{self.last_epoch_time:.0f}s")
        for m in self.live():
            self.members[m].info["stop_reason"] = reason
        return True

    def _train_one_epoch(self) -> None:
        self.epoch += 1
        lrs = list(self.optimizer.param_groups[0]["lr"])
        t0 = time.perf_counter()
        rows = {m: {"epoch": self.epoch, "step": 0, "lr": lrs[m]}
                | {f"train_{k}": v for k, v in train.items() if k != "seconds"}
                for m, train in self.run_epoch("train", train=True).items()}
        for row in rows.values():
            row["step"] = self.step
        for split in self.cfg.eval_splits:
            evaluated = self.evaluate(split)
            for m in rows:
                if m in evaluated:
                    rows[m] |= {f"{split}_{k}": v for k, v in evaluated[m].items()}
        self.schedule.step()
        epoch_time = time.perf_counter() - t0
        self.elapsed += epoch_time
        self.last_epoch_time = epoch_time
        key = _member_trainer(self, 0).selection_key  # the single run's rule (trainer.select_on)
        with self._signals.deferred():  # a signal now waits until the epoch's records are all written
            improved = []
            for m in self.live():
                r, row = self.members[m], rows[m] | {"epoch_time": epoch_time, "wall_time": self.elapsed}
                r.history.append(row)
                if r.best is None or row[key] < r.best[key]:
                    r.best = row
                    improved.append(m)
                # Order matters for resume: metrics first, then the checkpoint that covers them,
                # then best.pt (as a single run: engine.restore_best)
                write_jsonl(r.run_dir / "metrics.jsonl", r.history)
            checkpoint.save(self.ckpt_dir / "last.pt", self.state_dict())
            for m in improved:
                checkpoint.save(self.members[m].ckpt_dir / "best.pt",
                                {"model": self._member_state(m), "epoch": self.epoch})
            for m in self.live():
                self.write_final(m)
                if self.members[m].logger:
                    self.members[m].logger.log(self.members[m].history[-1], step=self.step)

    def _member_state(self, m: int) -> dict:
        """Member m's state as an ordinary model's ``state_dict`` (loadable by a single run)."""
        return {k: v[m].clone() for k, v in self.model.state_dict().items()}

    @property
    def _evaluates_after_training(self) -> bool:
        """Whether the single run evaluates more than the test split after training."""
        cfg = self.cfg
        return bool(cfg.stream_splits or cfg.eval_lengths or cfg.final_reestimate)

    def test_at_best(self, members: list[int]) -> dict[int, tuple[dict | None, dict]]:
        """{member: (test metrics, whole-split metrics)} at each member's own best weights, as
        its single run's ``Trainer.test_at_best`` gives them. The test split alone is
        evaluated for every member in one pass; the evaluations after training (streams, test
        by length, the final re-estimation) by the single run's own code, one member at a time."""
        if not members or not (self.cfg.test_split or self.cfg.stream_splits):
            return {}
        if self._evaluates_after_training:
            tested = {}
            for m in members:
                try:
                    tested[m] = self._member_at_best(m)
                except Diverged as e:  # a non-finite loss in its evaluation: this member alone
                    self._diverge(m, str(e))
            return tested
        return {m: (test, {}) for m, test in self._test_all_at_best(members).items()}

    def _member_at_best(self, m: int) -> tuple[dict | None, dict]:
        """Member m's single run after training: ``Trainer.test_at_best`` of an ordinary model
        (``model.member(m)``) on member m's data, loaded from member m's ``best.pt``. It draws
        nothing at random (the re-estimation runs dropout in evaluation mode)."""
        r = self.members[m]
        single = Trainer(model=self.model.member(m), data=self.data.modules[m], optimizer=None,
                         scheduler=None, config=self.cfg, run_dir=r.run_dir, device=self.device,
                         info=r.info)
        single.best = r.best  # the epoch its best.pt must hold
        return single.test_at_best()

    def _test_all_at_best(self, members: list[int]) -> dict[int, dict]:
        """Each member's test metrics with its own best-validation weights, in one pass."""
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        best = {k: v.clone() for k, v in current.items()}
        for m in members:
            r = self.members[m]
            saved = load_best(r.ckpt_dir / "best.pt", r.best, self.device)["model"]
            for k, v in saved.items():
                best[k][m] = v
        self.model.load_state_dict(best)
        try:
            return self.evaluate(self.cfg.test_split)
        finally:
            self.model.load_state_dict(current)

    def write_final(self, m: int) -> dict:
        """Member m's ``final.json``, written by its single run's ``Trainer.write_final``."""
        r = self.members[m]
        return _member_trainer(self, m).write_final(r.status, r.error, r.test, r.extra)
