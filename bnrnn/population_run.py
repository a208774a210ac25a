"""Launching a population: ``python -m bnrnn.train experiment=grid_char_rnn population.seeds=[1,2,3]``.

One process trains M members of one shape (docs/population.md, "Training"). Member k's
configuration is the run's configuration with ``seed`` = ``population.seeds[k]`` and each
``population.<group>.<key>`` list's k-th value set at ``<group>.<key>`` (``optim.lr``,
``optim.momentum``, ``schedule.decay``, ``trainer.clip_grad_norm``, ...): an ordinary
configuration, validated as one, with no population block. Each member is written as an
ordinary run in ``<run dir>/<member_dir>``: ``.hydra/`` with its own configuration and
overrides (``final.json``'s ``command`` trains that member alone), ``metrics.jsonl``,
``final.json``, ``checkpoints/best.pt``. The run directory itself holds the population's
``.hydra/`` and ``checkpoints/last.pt`` (the whole population; ``resume=true`` continues it).

Member k is built as a single run with its configuration would build it: the RNGs seeded with
its seed, then its data, then its model; its data order is its data's (PTB characters shuffle
by ``data.seed``, which follows ``seed``; PTB words have one order). Its dropout masks come from
its own random stream: the state its device's generator has in its single run when training
starts (``bnrnn.nn.streams``), saved with the population's checkpoint.
"""
from __future__ import annotations

import copy
import inspect
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bnrnn import rundir
from bnrnn.config import ConfigError, check_data_files, check_device, validate, validate_data
from bnrnn.engine import Interrupted, TrainerConfig
from bnrnn.io import hardware, write_json
from bnrnn.models.population import PopulationLM
from bnrnn.nn.streams import DEVICES as STREAM_DEVICES
from bnrnn.nn.streams import MemberStreams, generator_state
from bnrnn.population import MemberSchedule, PopulationAdam, PopulationSchedule, PopulationSGD
from bnrnn.population_engine import MemberRun, PopulationTrainer

log = logging.getLogger("bnrnn")


@dataclass(frozen=True)
class OptimizerForm:
    """A torch optimizer's population form and the keys it takes (each may be per member; a key
    left unset takes the torch optimizer's own default, as in a single run)."""

    torch_class: type
    population_class: type
    keys: tuple[str, ...]


# the optimizers a population trains with, by optim._target_
OPTIMIZERS = {
    "torch.optim.SGD": OptimizerForm(torch.optim.SGD, PopulationSGD,
                                     ("lr", "momentum", "dampening", "weight_decay", "nesterov")),
    "torch.optim.Adam": OptimizerForm(torch.optim.Adam, PopulationAdam,
                                      ("lr", "betas", "eps", "weight_decay", "amsgrad")),
}
# population.<group>.<key> lists, each setting <group>.<key> of the members' configurations
PER_MEMBER = {"optim": tuple(dict.fromkeys(k for form in OPTIMIZERS.values() for k in form.keys)),
              "schedule": ("decay", "after_epoch", "every"),
              "trainer": ("clip_grad_norm",)}
MODELS = ("bnrnn.models.lm.WordLM", "bnrnn.models.char.CharRNN", "bnrnn.models.char.CharLSTM",
          "bnrnn.models.speech.FramewiseClassifier")
# batches of these data modules are (T, B) id tensors: members' own batches stack to (T, M, B)
TOKEN_DATA = ("bnrnn.data.ptb.PTBWordData", "bnrnn.data.ptb_char.PTBCharData")


def _lists(cfg: DictConfig) -> dict[str, list]:
    """The per-member lists given, by the member key they set ('seed', 'optim.lr', ...)."""
    pop = cfg.get("population") or {}
    out = {"seed": pop.get("seeds")} | {f"{g}.{k}": (pop.get(g) or {}).get(k)
                                         for g, keys in PER_MEMBER.items() for k in keys}
    for key, v in out.items():
        if v is not None and (isinstance(v, str) or not isinstance(v, Sequence)):
            example, hint = ((f"[{_show(v)}] or [1,2,3]", f"or seed={_show(v)} for a single run")
                             if key == "seed" else
                             (f"[{_show(v)},{_show(v)}]", f"or {key}={_show(v)} for every member"))
            raise ConfigError(_population_key(key), f"takes a list of one value per member, e.g. "
                              f"{example}; {hint}", v)
    return {k: list(v) for k, v in out.items() if v is not None}


def requested(cfg: DictConfig) -> bool:
    """Whether the configuration asks for a population (any per-member list given)."""
    return bool(_lists(cfg))


def without_population(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its (unused) population block removed: an ordinary run records exactly the
    configuration it recorded before populations existed."""
    if "population" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["population"]
    return cfg


@dataclass
class MemberPlan:
    k: int
    seed: int
    cfg: DictConfig  # the member's own, ordinary configuration
    resolved: dict
    overrides: list[str]
    dir: str


def plan(cfg: DictConfig, overrides: list[str]) -> list[MemberPlan]:
    """Every member's configuration and run directory name, checked before any work."""
    lists = _lists(cfg)
    sizes = {key: len(v) for key, v in lists.items()}
    first, M = next(iter(sizes.items()))  # the seeds when given: the others must match them
    for key, n in sizes.items():
        if n != M:
            raise ConfigError(_population_key(key), f"has {n} values, {_population_key(first)} "
                              f"{M}; give every list one value per member", lists[key])
    form = OPTIMIZERS.get((cfg.get("optim") or {}).get("_target_"))
    for key in lists:  # a list for a key the optimizer does not take (momentum with Adam)
        if form is not None and key.startswith("optim.") and key[len("optim."):] not in form.keys:
            raise ConfigError(_population_key(key), f"is not a key of {form.torch_class.__name__}; "
                              f"a population with it takes {', '.join(form.keys)} per member")
    if not (cfg.get("schedule") or {}).get("_target_") and any(k.startswith("schedule.") for k in lists):
        raise ConfigError("population.schedule", "per-member schedule values need a schedule; "
                          "add schedule=decay_after")
    lists.setdefault("seed", [cfg.seed] * M)
    # the population's own overrides, without its population.* keys and the keys a member sets
    keep = [o for o in rundir.defining(overrides) if not _override_key(o).startswith("population.")
            and _override_key(o) not in lists]
    fmt = cfg.population.member_dir
    fmt = fmt if isinstance(fmt, str) else list(fmt)
    base = without_population(cfg)
    members = []
    for k in range(M):
        member = rundir.as_recorded(copy.deepcopy(base))  # resume: the population's instruction
        values = {key: v[k] for key, v in lists.items()}
        with open_dict(member):
            for key, value in values.items():
                OmegaConf.update(member, key, value, merge=False)
        name = _member_name(fmt, k, values["seed"], M)
        own = [_member_override(key, v, base, overrides) for key, v in values.items()]
        try:
            resolved = validate(member)
        except ConfigError as e:
            if e.key not in lists:
                raise
            # the value came from a population list: name the list the user wrote, not the
            # member key it was copied to
            raise ConfigError(_population_key(e.key), f"member {k}'s value {_show(values[e.key])} "
                              f"{e.problem}", lists[e.key]) from None
        members.append(MemberPlan(k, values["seed"], member, resolved, keep + own, name))
    names = [p.dir for p in members]
    if len(set(names)) != M or any(n in ("", ".", "..") or "/" in n for n in names):
        raise ConfigError("population.member_dir", f"must name a distinct subdirectory per member "
                          f"(got {names}); use {{k}}", fmt)
    _check_supported(members[0].resolved)
    return members


def _member_name(fmt: str | list[str], k: int, seed: int, M: int) -> str:
    """Member k's directory name: ``fmt`` with {k} and {seed} filled in, or the k-th of a list."""
    if not isinstance(fmt, str):
        if len(fmt) != M:
            raise ConfigError("population.member_dir", f"lists {len(fmt)} names for {M} members", fmt)
        return str(fmt[k])
    try:
        return fmt.format(k=k, seed=seed)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError("population.member_dir", f"may use {{k}} and {{seed}} only ({e})", fmt) from None


def _population_key(member_key: str) -> str:
    return "population.seeds" if member_key == "seed" else f"population.{member_key}"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _member_override(key: str, value, base: DictConfig, overrides: list[str]) -> str:
    """The override setting a member's ``key``, as its own command must spell it: ``+key=value``
    where the composed configuration has no such key (optim=adam sets no betas), as the
    population's own override of it was spelled."""
    given = [o for o in overrides if _override_key(o) == key]
    prefix = given[-1][:len(given[-1]) - len(given[-1].lstrip("+"))] if given else ""
    if not prefix and OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
        prefix = "+"
    return f"{prefix}{key}={_show(value)}"


_ABSENT = object()


def _show(value) -> str:
    """A value as an override writes it; a list without spaces (one word of a command line)."""
    if isinstance(value, Sequence) and not isinstance(value, str):  # a list, a ListConfig
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _check_supported(c: dict) -> None:
    """What a population can train: the LMs, SGD or Adam, decay_after or a constant rate."""
    if c["model"].get("_target_") not in MODELS:
        raise ConfigError("model", f"a population trains {', '.join(MODELS)}; not this model",
                          c["model"].get("_target_"))
    if (c["model"].get("norm_options") or {}).get("backend") == "native":
        raise ConfigError("model.norm_options.backend", "native (cuDNN/ATen) cannot give each member "
                          "its own weights; a population runs auto (our fused loop on CUDA, the "
                          "reference loop elsewhere), fused or reference", "native")
    optim = c["optim"]
    if optim.get("_target_") not in OPTIMIZERS:
        raise ConfigError("optim", f"a population trains with {' or '.join(OPTIMIZERS)} "
                          f"(optim=sgd or optim=adam)", optim.get("_target_"))
    keys = OPTIMIZERS[optim["_target_"]].keys
    if extra := [k for k in optim if k not in ("_target_", *keys)]:
        raise ConfigError(f"optim.{extra[0]}", f"not supported in a population with "
                          f"{optim['_target_']}; it takes {', '.join(keys)}")
    schedule = c.get("schedule") or {}
    if schedule.get("_target_") not in (None, "bnrnn.schedules.decay_after"):
        raise ConfigError("schedule", "a population supports schedule=decay_after or none",
                          schedule.get("_target_"))


class PopulationData:
    """The members' data as one: ``batches`` yields each member's batch stacked on axis 1
    ((T, B) -> (T, M, B)), or, when every member reads one data object, its (T, B) batches."""

    def __init__(self, modules: list, splits: list[str]):
        self.modules = modules
        self.shared = all(d is modules[0] for d in modules)
        self.stateful = modules[0].stateful
        for split in splits:
            counts = {d.num_batches(split) for d in modules}
            if len(counts) != 1:
                raise ConfigError("data", f"the members' {split} splits give different numbers "
                                  f"of batches ({sorted(counts)}); a population has one shape")

    @property
    def dims(self):
        return self.modules[0].dims

    def num_batches(self, split: str) -> int:
        return self.modules[0].num_batches(split)

    def batches(self, split: str, epoch: int = 0):
        if self.shared:
            yield from self.modules[0].batches(split, epoch)
            return
        for parts in zip(*(d.batches(split, epoch) for d in self.modules)):
            yield tuple(torch.stack(xs, dim=1) for xs in zip(*parts))


def run(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train the population ``cfg`` asks for in ``run_dir``; returns the best member's best
    validation metric (the sweep objective), ``inf`` when every member diverged."""
    from bnrnn.train import objective, resolve_device

    validate(cfg)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    members = plan(cfg, overrides)
    run_dir = Path(run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    device = resolve_device(cfg.device)
    check_device(members[0].resolved, device)
    for p in members:  # data.root and the cache, before the run directory is claimed
        check_data_files(p.resolved)
    lock, resume_state = rundir.claim(run_dir, bool(cfg.resume), resolved, device)
    locks = [lock]
    try:
        for p in members:
            locks.append(rundir.RunLock(run_dir / p.dir))
            if not cfg.resume and rundir.holds_run(run_dir / p.dir):
                raise rundir.RunDirError(f"{run_dir / p.dir} already holds a run; choose another "
                                         f"hydra.run.dir for a new population")
        if resume_state is not None:
            done = [rundir.nothing_to_resume(run_dir / p.dir, resume_state, cfg.trainer.max_epochs,
                                             ("completed", "diverged")) for p in members]
            if all(done):
                log.info("population %s is complete: nothing to resume; its records stay as they are",
                         run_dir)
                return min(objective(final) for final in done)
        return _run(cfg, run_dir, resolved, device, resume_state, members, overrides)
    finally:
        for held in locks:
            held.release()


def _run(cfg, run_dir: Path, resolved: dict, device, resume_state, members: list[MemberPlan],
         overrides: list[str]) -> float:
    from bnrnn.train import objective, run_info, seed_everything

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None

    def write_hydra_files():
        rundir.write_hydra_files(run_dir, rundir.as_recorded(cfg), rundir.defining(overrides), hydra_cfg)
        for p in members:
            rundir.write_hydra_files(run_dir / p.dir, p.cfg, p.overrides)

    if resume_state is None:
        write_hydra_files()
    M, records, trainer, continuing = len(members), [], None, resume_state is None
    try:
        datas, models, streams = _build(members, cfg.deterministic, device)
        for p in members:
            mdir = run_dir / p.dir
            info = run_info(p.cfg, p.resolved, p.overrides)
            if resume_state is not None:
                info = rundir.continued(info, mdir, resume_state["epoch"])
            info["population"] = {"dir": str(run_dir), "member": p.k, "size": M}
            info["hardware"] = hardware(device)
            logger = instantiate(p.cfg.logger, run_dir=str(mdir))
            logger.log_config(p.resolved)
            records.append(MemberRun(mdir, info, logger))
        model = PopulationLM.stack(models).to(device).use_streams(streams)
        optimizer = _optimizer(model, [p.resolved["optim"] for p in members])
        schedule = PopulationSchedule(optimizer, [_schedule(p.resolved.get("schedule")) for p in members])
        trainer_cfg = TrainerConfig(**members[0].resolved["trainer"])
        trainer_cfg.progress = trainer_cfg.progress and not cfg.quiet
        # what training draws outside the members' streams (nothing, today) comes from here
        seed_everything(members[0].seed, cfg.deterministic)
        trainer = PopulationTrainer(
            model=model, data=PopulationData(datas, _splits(trainer_cfg)), optimizer=optimizer,
            schedule=schedule, clip=[p.resolved["trainer"]["clip_grad_norm"] for p in members],
            config=trainer_cfg, run_dir=run_dir, members=records, device=device,
            resolved_config=resolved)
        if resume_state is not None:
            trainer.resume_from(resume_state)
            # the population goes on from here: only now may this invocation rewrite its records
            write_hydra_files()
            continuing = True
            log.info("resumed population %s at epoch %d", run_dir, trainer.epoch)
        log.info("%s: population of %d, %d parameters each, on %s, run dir %s", cfg.name, M,
                 sum(p[0].numel() for p in model.parameters()), device, run_dir)
        finals = trainer.fit()
    except ConfigError:
        raise
    except Exception as e:
        log.exception("population %s failed in %s", cfg.name, run_dir)
        if continuing:
            _record_failure(trainer, records, members, run_dir, e)
        else:  # a resume that failed before the population went on: its records are still true
            log.error("%s: the resume failed before the population continued; its members' "
                      "final.json and .hydra/ stay as they were", run_dir)
        raise
    if trainer.signum is not None and any(f["status"] == "interrupted" for f in finals):
        raise Interrupted.by(trainer.signum)
    return min(objective(f) for f in finals)


def _build(members: list[MemberPlan], deterministic: bool, device: torch.device):
    """Each member's data and model, built as its single run builds them (seed, data, model),
    and its random stream: ``device``'s generator state right after its model is built, where
    its single run's training starts drawing (on CUDA nothing is drawn while building: the
    seeded state). Members whose data configurations are equal share one data object when
    building it draws nothing from the RNG (so sharing changes no member's initialisation)."""
    from bnrnn.train import build_data, seed_everything

    datas, models, states, built = [], [], [], {}
    for p in members:
        seed_everything(p.seed, deterministic)
        key = repr(p.resolved["data"])
        if key in built:
            data = built[key]
        else:
            before = torch.random.get_rng_state()
            data = build_data(p.cfg.data)
            if torch.equal(before, torch.random.get_rng_state()):
                built[key] = data
        validate_data(p.cfg, data)
        if datas and data is not datas[0] and p.resolved["data"]["_target_"] not in TOKEN_DATA:
            # padded (features, lengths, labels) batches of different lengths cannot be stacked
            raise ConfigError("data", "this data's members must read one data object (equal data "
                              "configurations, built without drawing from the RNG); its batches "
                              "of different members cannot be stacked", p.resolved["data"]["_target_"])
        datas.append(data)
        models.append(instantiate(p.cfg.model, **data.dims))
        if device.type in STREAM_DEVICES:
            states.append(generator_state(device))
    if device.type not in STREAM_DEVICES:
        log.warning("population on %s: no per-member random streams there (only on %s); dropout "
                    "draws one mask stream for all members", device, ", ".join(STREAM_DEVICES))
        return datas, models, None
    return datas, models, MemberStreams(states, device)


def _optimizer(model: PopulationLM, optim: list[dict]):
    """The population optimizer of the members' ``optim`` configurations (one ``_target_``):
    each key per member, an unset key the torch optimizer's own default (as a single run gets)."""
    form = OPTIMIZERS[optim[0]["_target_"]]
    defaults = inspect.signature(form.torch_class).parameters
    return form.population_class(dict(model.named_parameters()), model.population,
                                 **{k: [o.get(k, defaults[k].default) for o in optim] for k in form.keys})


def _schedule(c: dict | None) -> MemberSchedule:
    """A member's schedule; none (or values without a _target_) is a constant rate, as in a
    single run (bnrnn.train instantiates no scheduler then)."""
    if not c or not c.get("_target_"):
        return MemberSchedule()
    return MemberSchedule(c["decay"], c["after_epoch"], c.get("every", 1))


def _splits(cfg: TrainerConfig) -> list[str]:
    return ["train", *cfg.eval_splits, *([cfg.test_split] if cfg.test_split else [])]


def _record_failure(trainer, records, members, run_dir, error) -> None:
    """Every member's final.json says ``failed`` with the error (best effort), except a
    member that had already ended: a diverged (or completed and tested) member keeps its own
    outcome, which the population's later failure does not change."""
    message = f"{type(error).__name__}: {error}"
    try:
        for m, p in enumerate(members):
            if trainer is not None:
                if trainer.members[m].status not in ("diverged", "completed"):
                    trainer.members[m].status, trainer.members[m].error = "failed", message
                trainer.write_final(m)
            else:
                write_json(run_dir / p.dir / "final.json",
                           {"status": "failed", "error": message, "epochs_completed": 0}
                           | (records[m].info if m < len(records) else {"seed": p.seed}))
    except OSError as e:
        log.error("could not record the failure in %s: %s", run_dir, e)
