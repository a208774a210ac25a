"""The training loop: one ``Trainer`` for every experiment (PTB word/char, speech).

The loop knows nothing about language models or speech: it asks the data object for batches
and the model for a :class:`~bnrnn.contracts.StepOutput` per batch, as ``bnrnn/contracts.py``
writes down (``DataModule``, ``Model``, and the ``data.dims`` → model-argument coupling).

Each epoch appends one line to ``metrics.jsonl``, saves ``checkpoints/last.pt`` (and
``checkpoints/best.pt`` when validation improves) and rewrites ``final.json``; every write is
atomic. A run ends ``diverged`` when its loss goes non-finite, when a stretch of training steps
averages more than ``divergence_margin`` nats above ``model.chance_loss`` (it predicts worse
than a uniform guess), or when a final metric is not finite; SIGINT/SIGTERM end it
``interrupted`` (:class:`Interrupted` carries the signal, so the caller can exit 130/143).
``resume_from`` (given ``last.pt``'s state) continues and reproduces the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from bnrnn import checkpoint
from bnrnn.contracts import DataModule, Model, StepOutput
from bnrnn.evaluation import evaluate_by_length, evaluate_stream
from bnrnn.io import git_revision, hardware, read_jsonl, write_json, write_jsonl
from bnrnn.nn import SeqBatchNorm, batch_statistics, update_population_statistics


class Diverged(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """The run was stopped from outside; ``signum`` is the signal (None: stop_after_epochs)."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum

    @classmethod
    def by(cls, signum: int) -> "Interrupted":
        return cls(f"received {signal.Signals(signum).name}", signum)


class StopSignals:
    """SIGTERM and SIGINT during training, as :class:`Interrupted`: at once, except while an
    epoch's records are being written (``with signals.deferred():``), when the signal waits for
    them, so a stopped run never leaves a half-written epoch. ``with StopSignals() as s:``
    installs the handlers and puts the previous ones back."""

    def __init__(self):
        self._writing, self._pending, self._previous = False, None, {}

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.signal(sig, self._on_signal)
                          for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if self._writing:
            self._pending = signum
            return
        raise Interrupted.by(signum)

    @contextlib.contextmanager
    def deferred(self):
        """The block runs to its end whatever signal arrives; one that did is raised after it."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._pending is not None:
            raise Interrupted.by(self._pending)


@dataclass
class TrainerConfig:
    max_epochs: int
    clip_grad_norm: float | None = None
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    eval_splits: tuple[str, ...] = ("valid",)
    test_split: str | None = "test"
    check_every: int = 50  # steps between finiteness checks / progress updates (each syncs)
    stop_after_epochs: int | None = None  # simulate an interruption (tests, time-boxed runs)
    reestimate_batches: int = 0  # >0: re-estimate BN population statistics (Cooijmans) first
    progress: bool = True
    protocol_epochs: int | None = None  # the paper's epoch count; fewer completed = shortened
    max_time: float | None = None  # seconds of training: no epoch starts that would end past it
    # also evaluate with batch norms on the evaluation batch's own statistics (the authors' PTB
    # code did); reported as <split>_batchstat_<metric> beside the population-statistics metrics
    eval_batch_stats: bool = False
    # diverged: training steps between two checks average more than this above chance_loss
    divergence_margin: float = 1.0
    # the validation metric that picks the best epoch, e.g. "err" or "batchstat_err" (lower is
    # better); None: the model's ``selection``. A batchstat_ metric of a model without batch
    # norms is its plain metric (the two evaluations compute the same function)
    select_on: str | None = None
    # after training, at the best weights: re-estimate every BN's population statistics over the
    # whole training split before testing (Cooijmans et al.'s penntreebank_evaluate.py)
    final_reestimate: bool = False
    # whole-split evaluation at the best weights (bnrnn.evaluation): each split as stream_count
    # contiguous streams read in chunks of stream_chunk steps -> <split>_<metric>_stream; the
    # test split by example length -> <test>_<metric>_by_length {"<L>": .., "whole": ..}
    stream_splits: tuple[str, ...] = ()
    stream_count: int = 1
    stream_chunk: int = 1000
    eval_lengths: tuple[int, ...] = ()


def _to(batch, device):
    return tree_map(lambda x: x.to(device, non_blocking=True) if isinstance(x, Tensor) else x, batch)


class Check(NamedTuple):
    """A pass's totals read back at a check: summed loss and unit count so far, the mean loss
    over the units since the previous check (``window``), all host float64 tensors of the
    loop's member shape, and the seconds since the pass began."""

    total: Tensor
    count: Tensor
    window: Tensor
    seconds: float


class EpochLoop:
    """The batch loop that a single run (:class:`Trainer`) and a population
    (:class:`~bnrnn.population_engine.PopulationTrainer`) share: forward each batch (carrying
    the state where the data is stateful), update in training, and add up the loss, the unit
    count and the model's other sums on the device, read back once per ``check_every`` batches.
    A subclass says what an update is (``_update``), what a check does (``_check``: raise, or
    return True to end the pass early) and what a pass returns (``_results``); ``shape`` is
    the shape of its totals, ``()`` for one run and ``(M,)`` for M members."""

    shape: tuple[int, ...] = ()
    label = ""  # said after the split on the progress bar

    def _autocast(self):
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def run_epoch(self, split: str, train: bool, batch_stats: bool = False):
        """One pass over ``split``: the model's metrics plus throughput (see ``_results``).
        ``batch_stats``: an evaluation whose batch norms use the batch's statistics (see
        ``batch_statistics``)."""
        self.model.train(train)
        with batch_statistics(self.model) if batch_stats else contextlib.nullcontext():
            return self._pass(split, train)

    def _pass(self, split: str, train: bool):
        model, data = self.model, self.data
        state = None  # reset at each epoch and before each evaluation
        zeros = dict(size=self.shape, device=self.device)
        loss_sum = torch.zeros(**zeros, dtype=torch.float64)
        # the unit count stays on the device too (a model may count there, e.g. unpadded frames)
        count_sum = torch.zeros(**zeros, dtype=torch.int64)
        sums: dict[str, Tensor] = {}
        checked = (0.0, 0.0)  # loss_sum and count at the previous check
        chance = getattr(model, "chance_loss", None) if train else None
        n = data.num_batches(split)
        bar = _progress(n, f"epoch {self.epoch} {split}{self.label}", self.cfg.progress)
        start = time.perf_counter()

        def read_back() -> Check:
            # one transfer: a float64 holds every count below 2**53 exactly
            total, count = torch.stack((loss_sum, count_sum.double())).cpu()
            window = (total - checked[0]) / (count - checked[1]).clamp(min=1)
            return Check(total, count, window, time.perf_counter() - start)

        try:
            with torch.set_grad_enabled(train):
                for i, batch in enumerate(data.batches(split, self.epoch if train else 0)):
                    with self._autocast():
                        out: StepOutput = model(_to(batch, self.device), state)
                    if train:
                        self._update(out)
                    state = out.state if data.stateful else None
                    loss_sum += out.loss_sum.double()
                    count_sum += out.count
                    for k, v in out.sums.items():
                        sums[k] = sums.get(k, 0) + v.detach().double()
                    if (i + 1) % self.cfg.check_every == 0 or i + 1 == n:
                        now = read_back()
                        checked = (now.total, now.count)
                        if self._check(split, now, chance, bar):
                            break
                    bar.update(1)
        finally:
            bar.close()
        return self._results(split, read_back(), {k: v.cpu() for k, v in sums.items()})

    def _reestimate(self, n_batches: int) -> int:
        """Cooijmans et al.'s re-estimation over the first ``n_batches`` training batches (the
        state carried as in training); returns the number of batches used."""
        carry = None

        def forward(model, batch):
            nonlocal carry
            with self._autocast():
                out = model(_to(batch, self.device), carry)
            carry = out.state if self.data.stateful else None

        batches = itertools.islice(self.data.batches("train", 0), n_batches)
        return update_population_statistics(self.model, batches, forward)


class Trainer(EpochLoop):
    def __init__(self, *, model: Model, data: DataModule, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, config: TrainerConfig,
                 run_dir: str | Path, device: torch.device, logger=None,
                 info: dict | None = None, resolved_config: dict | None = None):
        self.model, self.data, self.optimizer, self.scheduler = model, data, optimizer, scheduler
        self.cfg, self.device, self.logger = config, device, logger
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.info = dict(info or {})
        # facts fixed for the whole run, found once (git is a subprocess)
        if "git_revision" not in self.info:
            self.info["git_revision"] = git_revision()
        if "hardware" not in self.info:
            self.info["hardware"] = hardware(device)
        self.resolved_config = resolved_config or {}
        self.epoch, self.step = 0, 0
        self.best: dict | None = None  # the metrics row of the best epoch
        self.history: list[dict] = []
        self.elapsed = 0.0  # training wall time over all (resumed) segments

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "elapsed": self.elapsed,
            "rng": checkpoint.rng_state(),
            "config": self.resolved_config,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.elapsed = state["best"], state["elapsed"]
        checkpoint.set_rng_state(state["rng"])

    def resume_from(self, state: dict) -> None:
        """Continue from a checkpoint's ``state``; metrics rows written after it are dropped."""
        self.load_state_dict(state)
        self.history = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r["epoch"] <= self.epoch]
        write_jsonl(self.run_dir / "metrics.jsonl", self.history)
        restore_best(self.ckpt_dir / "best.pt", self.best, self.epoch, state["model"])

    # ------------------------------------------------------------------ loops
    def _update(self, out: StepOutput) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        out.objective.backward()
        if self.cfg.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.optimizer.step()
        self.step += 1

    def _check(self, split: str, now: "Check", chance: float | None, bar) -> bool:
        total, count = float(now.total), int(now.count)
        if (why := divergence(split, total / count, float(now.window), chance,
                              self.cfg.divergence_margin, self.epoch, self.step)) is not None:
            raise Diverged(why)
        bar.set_postfix(self.model.metrics({"loss_sum": total, "count": count})
                        | {"tok/s": f"{count / now.seconds:.0f}"}, refresh=False)
        return False

    def _results(self, split: str, now: "Check", sums: dict[str, Tensor]) -> dict[str, float]:
        totals = {"loss_sum": float(now.total), "count": int(now.count)}
        totals |= {k: float(v) for k, v in sums.items()}
        if not math.isfinite(totals["loss_sum"]):
            raise Diverged(f"non-finite {split} loss at epoch {self.epoch}, step {self.step}")
        return self.model.metrics(totals) | {"tokens_per_s": totals["count"] / now.seconds,
                                             "seconds": now.seconds}

    def evaluate(self, split: str, reestimate: bool = True) -> dict[str, float]:
        """The model's metrics on ``split`` (population statistics), plus ``batchstat_<metric>``
        under batch statistics when ``eval_batch_stats`` is set and the model has batch norms.
        ``reestimate``: first re-estimate on ``reestimate_batches`` training batches, if set."""
        if reestimate and self.cfg.reestimate_batches:
            self.reestimate_statistics(self.cfg.reestimate_batches)
        out = _metrics_only(self.run_epoch(split, train=False))
        if self.cfg.eval_batch_stats and self._has_batch_norm:
            out |= {f"batchstat_{k}": v for k, v in
                    _metrics_only(self.run_epoch(split, train=False, batch_stats=True)).items()}
        return out

    @property
    def _has_batch_norm(self) -> bool:
        return any(isinstance(m, SeqBatchNorm) for m in self.model.modules())

    @property
    def selection_metric(self) -> str:
        """The metric (without the split) whose validation value picks the best epoch."""
        metric = self.cfg.select_on or self.model.selection
        if metric.startswith("batchstat_") and not self._has_batch_norm:
            return metric.removeprefix("batchstat_")
        return metric

    @property
    def selection_key(self) -> str:
        return f"{self.cfg.eval_splits[0]}_{self.selection_metric}"

    def stream_metrics(self) -> dict:
        """Whole-split metrics of the current weights (``stream_splits``, ``eval_lengths``)."""
        cfg, out = self.cfg, {}
        opts = dict(chunk=cfg.stream_chunk, device=self.device, autocast=self._autocast)
        streams = {split: evaluate_stream(self.model, self.data.stream(split),
                                          streams=cfg.stream_count, **opts)
                   for split in cfg.stream_splits}
        for split, metrics in streams.items():
            out |= {f"{split}_{k}_stream": v for k, v in metrics.items()}
        if cfg.eval_lengths:
            split = cfg.test_split
            stream = self.data.stream(split)
            # a length the (limited) split holds no example of is reported as null
            by_length = {str(n): evaluate_by_length(self.model, stream, n, **opts)
                         if stream.numel() >= n else None for n in cfg.eval_lengths}
            by_length["whole"] = streams.get(split) or evaluate_stream(self.model, stream, **opts)
            for k in by_length["whole"]:
                out[f"{split}_{k}_by_length"] = {n: None if m is None else m[k]
                                                 for n, m in by_length.items()}
        return out

    def reestimate_statistics(self, n_batches: int) -> int:
        """Cooijmans et al.'s evaluation: population statistics of every BN re-estimated by one
        pass over ``n_batches`` training batches (train-mode forward, no gradient): each step's
        statistic is the mean of its batch statistics. Returns the number of batches used."""
        return self._reestimate(n_batches)

    def fit(self) -> dict:
        """Train to ``max_epochs`` (or the end of a resumed run); returns ``final.json``."""
        status, error = "completed", None
        self.signum = None
        # a signal interrupts the run cleanly (between its epochs' records, never inside them)
        with StopSignals() as self._signals:
            try:
                while self.epoch < self.cfg.max_epochs:
                    if self.cfg.stop_after_epochs is not None and len(self.history) >= self.cfg.stop_after_epochs:
                        raise Interrupted(f"stop_after_epochs={self.cfg.stop_after_epochs} reached")
                    if self._out_of_time():
                        break
                    self._train_one_epoch()
            except Diverged as e:
                status, error = "diverged", str(e)
            except (KeyboardInterrupt, Interrupted) as e:
                status, error = "interrupted", str(e) or type(e).__name__
                self.signum = getattr(e, "signum", signal.SIGINT)
        test, extra = None, {}
        if status == "completed" and self.best is not None and (self.cfg.test_split or self.cfg.stream_splits):
            test, extra = self.test_at_best()
        if status == "completed" and (bad := _non_finite(self.best, test, extra)):
            status, error = "diverged", f"non-finite final metrics: {', '.join(bad)}"
        final = self.write_final(status, error, test, extra)
        if self.logger:
            self.logger.finish(final)
        return final

    def _out_of_time(self) -> bool:
        """A time-boxed run ends cleanly (best checkpoint tested, marked shortened) rather than
        being killed mid-epoch: stop when another epoch like the last would overrun max_time."""
        if self.cfg.max_time is None or not self.history:
            return False
        if self.elapsed + self.history[-1]["epoch_time"] <= self.cfg.max_time:
            return False
        self.info["stop_reason"] = (f"max_time={self.cfg.max_time:g}s: {self.elapsed:.0f}s used, "
                                    f"an epoch takes {self.history[-1]['epoch_time']:.0f}s")
        return True

    def _train_one_epoch(self) -> None:
        self.epoch += 1
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train = self.run_epoch("train", train=True)
        row = {"epoch": self.epoch, "step": self.step, "lr": lr}
        row |= {f"train_{k}": v for k, v in train.items() if k != "seconds"}
        for split in self.cfg.eval_splits:
            row |= {f"{split}_{k}": v for k, v in self.evaluate(split).items()}
        if self.scheduler:
            self.scheduler.step()
        self.elapsed += time.perf_counter() - t0
        row |= {"epoch_time": time.perf_counter() - t0, "wall_time": self.elapsed}
        with self._signals.deferred():  # a signal now waits until the epoch's records are all written
            self.history.append(row)
            key = self.selection_key
            improved = self.best is None or row[key] < self.best[key]
            if improved:
                self.best = row
            # Order matters for resume: metrics first, then the checkpoint that covers them, then
            # best.pt (a best.pt newer than last.pt would hold an epoch that a resume drops;
            # one older than last.pt's best is rewritten from it by restore_best).
            write_jsonl(self.run_dir / "metrics.jsonl", self.history)
            checkpoint.save(self.ckpt_dir / "last.pt", self.state_dict())
            if improved:
                checkpoint.save(self.ckpt_dir / "best.pt", {"model": self.model.state_dict(),
                                                           "epoch": self.epoch})
            self.write_final("running", None, None)
            if self.logger:
                self.logger.log(row, step=self.step)

    def test_at_best(self) -> tuple[dict[str, float] | None, dict]:
        """The test metrics and the whole-split metrics of the best-validation weights, after
        ``final_reestimate``'s pass over the whole training split when it is set. The model is
        given its current weights and statistics back afterwards."""
        best = load_best(self.ckpt_dir / "best.pt", self.best, self.device)
        current = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(best["model"])
        extra = {}
        try:
            final = self.cfg.final_reestimate and self._has_batch_norm
            if final:
                n = self.reestimate_statistics(self.data.num_batches("train"))
                extra["reestimated"] = {"split": "train", "batches": n}
            test = self.evaluate(self.cfg.test_split, reestimate=not final) if self.cfg.test_split else None
            return test, extra | self.stream_metrics()
        finally:
            self.model.load_state_dict(current)

    def write_final(self, status: str, error: str | None, test: dict | None,
                    extra: dict | None = None) -> dict:
        """Write the run's ``final.json`` (atomically) with ``status`` and its ``error``, the
        best epoch, the ``test`` metrics at the best weights and ``extra`` (stream and
        by-length metrics, re-estimation) beside the run's record; returns it."""
        protocol = self.cfg.protocol_epochs or self.cfg.max_epochs
        final = {
            "status": status,
            "error": error,
            "epochs_completed": len(self.history),
            "max_epochs": self.cfg.max_epochs,
            "protocol_epochs": protocol,
            # fewer epochs than the paper, or a data subset (limit_batches), is a shortened run
            "shortened": len(self.history) < protocol or bool(self.info.get("limit_batches")),
            "step": self.step,
            "wall_time": self.elapsed,
            "best_epoch": self.best["epoch"] if self.best else None,
            "best": self.best,
            "test": test,
            "selection": self.selection_key,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        } | (extra or {}) | self.info
        write_json(self.run_dir / "final.json", final)
        return final


def restore_best(path: Path, best: dict | None, epoch: int, model_state: dict) -> None:
    """On resume at ``epoch``: when the best epoch is that epoch but ``best.pt`` does not hold
    it (the run stopped between ``last.pt`` and ``best.pt``), write it from the checkpoint's
    weights, which are that epoch's."""
    if best is None or best["epoch"] != epoch:
        return
    try:
        saved = checkpoint.load(path)
    except checkpoint.CheckpointError:  # an unreadable copy: this epoch's weights replace it
        saved = None
    if saved is None or saved.get("epoch") != epoch:
        checkpoint.save(path, {"model": model_state, "epoch": epoch})


def load_best(path: Path, best: dict | None, device) -> dict:
    """``best.pt``, checked to hold the best epoch's weights (``best``, the metrics row the
    record reports): testing other weights would report another epoch's test as the best's."""
    saved = checkpoint.load(path, device)
    want = best["epoch"] if best else None
    got = None if saved is None else saved.get("epoch")
    if saved is None or got != want:
        raise checkpoint.CheckpointError(
            f"{path} holds epoch {got}, but the run's best epoch is {want}: its weights are not "
            "the best epoch's, so no test of them is reported; restore a good copy, or train "
            "the run again")
    return saved


def divergence(split: str, mean: float, window: float, chance: float | None, margin: float,
               epoch: int, step: int) -> str | None:
    """Why training has diverged at a check, or None: a non-finite mean loss, or a loss over the
    last steps (``window``) above the uniform prediction's (``chance``) plus ``margin``."""
    where = f"at epoch {epoch}, step {step}"
    if not math.isfinite(mean):
        return f"non-finite {split} loss ({mean}) {where}"
    if chance is not None and window > chance + margin:
        return (f"{split} loss {window:.4g} over the last steps is above the uniform "
                f"prediction's {chance:.4g} + margin {margin:g} {where}")
    return None


def _metrics_only(result: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in result.items() if k not in ("seconds", "tokens_per_s")}


def _non_finite(best: dict | None, test: dict | None, extra: dict | None = None) -> list[str]:
    """Names of the metrics in the best row, the test result and the whole-split metrics
    (``extra``, whose by-length entries are mappings) that are NaN or infinite."""
    flat = {}
    for k, v in (extra or {}).items():
        flat |= {f"{k}[{n}]": x for n, x in v.items()} if isinstance(v, dict) else {k: v}
    rows = [("", best or {}), ("test_", test or {}), ("", flat)]
    return [f"{p}{k}" for p, row in rows for k, v in row.items()
            if isinstance(v, float) and not math.isfinite(v)]


class _NoBar:
    def update(self, n=1): ...
    def set_postfix(self, *a, **k): ...
    def close(self): ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
