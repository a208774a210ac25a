"""The configuration's schema: every key of every group with its type and allowed range, checked
on the composed, resolved configuration before a run directory is claimed, any data is read or
any step is taken.

:func:`validate` checks the configuration alone; :func:`validate_data` checks what only the built
data object knows (a split too small for one batch). Both raise :class:`ConfigError`, whose
message is one line naming the key, the value and what is allowed::

    config error: data.batch_size=-4: must be an integer >= 1

A group's schema is chosen by its ``_target_`` (``data`` is PTB words, PTB characters or one of
two speech corpora), so the schema is a table of rules per target rather than Hydra structured
configs: OmegaConf checks types but not ranges, cannot pick a schema by ``_target_`` within one
group, and reports with multi-line messages. ``tests/test_config.py`` keeps each table equal to
the keyword arguments of the class it describes, so a new argument cannot go unchecked.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from bnrnn.data.ptb_char import CROPS, ENCODINGS, EXAMPLES
from bnrnn.models.char import DECODER_INITS, ORTHOGONAL
from bnrnn.nn.base import BACKENDS
from bnrnn.nn.norms import STATS
from bnrnn.nn.rnn import NormRNN
from bnrnn.nn.variants import VARIANTS


class ConfigError(ValueError):
    """A configuration value that cannot be used: one line, ``config error: key=value: why``."""

    def __init__(self, key: str, problem: str, value: Any = ...):
        written = "" if value is ... else show(value)
        if len(written) > 120:  # a whole list or mapping: the key says where, the start what
            written = written[:100] + f" ... ({len(written)} characters)"
        shown = key if value is ... else f"{key}={written}"
        super().__init__(f"config error: {shown}: {problem}")
        self.key, self.problem = key, problem


def show(value: Any) -> str:
    """A value as one would write it in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


# ------------------------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """``what`` completes "must be ...", ``ok`` tests a resolved value."""

    what: str
    ok: Callable[[Any], bool]

    def __or__(self, other: Rule) -> Rule:
        return Rule(f"{self.what} or {other.what}", lambda v: self.ok(v) or other.ok(v))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    if lo is not None and hi is not None:
        what = f"an integer in [{lo}, {hi}]"
    elif lo is not None:
        what = f"an integer >= {lo}"
    else:
        what = "an integer"
    return Rule(what, lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, inf: bool = False) -> Rule:
    """A real number (an integer is one too) in the interval; finite unless ``inf``."""
    if lo is not None and hi is not None:
        what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        what = f"a {'' if inf else 'finite '}number {'>' if lo_open else '>='} {lo:g}"
    else:
        what = "a finite number"
    if inf:
        what += " (inf allowed)"

    def ok(v) -> bool:
        if not _is_number(v) or math.isnan(v) or (math.isinf(v) and not inf):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return hi is None or (v < hi if hi_open else v <= hi)

    return Rule(what, ok)


def one_of(*choices: str, note: str = "") -> Rule:
    return Rule(f"one of {', '.join(choices)}{note}", lambda v: isinstance(v, str) and v in choices)


def string(nonempty: bool = True) -> Rule:
    return Rule("a non-empty string" if nonempty else "a string",
                lambda v: isinstance(v, str) and (bool(v) or not nonempty))


def list_of(item: Rule, min_len: int = 0) -> Rule:
    what = f"a list of {'at least one ' if min_len else ''}{item.what.removeprefix('a ').removeprefix('an ')}"
    return Rule(what, lambda v: isinstance(v, (list, tuple)) and len(v) >= min_len
                and all(item.ok(x) for x in v))


def pair(item: Rule) -> Rule:
    """[min, max] with min <= max."""
    return Rule(f"[min, max] with min <= max, each {item.what}",
                lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                and all(item.ok(x) for x in v) and v[0] <= v[1])


NULL = Rule("null", lambda v: v is None)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
POSITIVE = integer(1)
NATURAL = integer(0)
SEED = integer(0, 2**32 - 1)  # numpy's seeds are unsigned 32-bit
PROBABILITY = number(0, 1, hi_open=True)  # dropout, momentum: [0, 1)


def optional(rule: Rule) -> Rule:
    return NULL | rule


@dataclasses.dataclass(frozen=True)
class Group:
    """A mapping's keys and their rules (a nested :class:`Group` for a nested mapping)."""

    fields: dict[str, Rule | Group]
    required: tuple[str, ...] = ()
    nullable: bool = False  # null stands for the class's default (e.g. data.split_md5)



def _config_dir() -> Path:
    """configs/ beside the package in a clone (or editable install); inside it (bnrnn/configs)
    in an installed wheel, where setup.py puts it."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "configs", package / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"bnrnn: no Hydra configs beside or inside {package}; reinstall "
                            f"bnrnn (pip install .) or run from a clone of the repository")


CONFIG_DIR = _config_dir()
# Hydra's instantiate keys, not the target's arguments
META = ("_target_", "_convert_", "_recursive_", "_partial_")


# ----------------------------------------------------------------------------------- schemas
TOP = {
    "name": string(),
    "seed": SEED,
    "device": Rule("auto, cpu, cuda or cuda:<index>",
                   lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None),
    "deterministic": BOOL,
    "allow_tf32": BOOL,
    "threads": optional(POSITIVE),
    "resume": BOOL,
    "quiet": BOOL,
}

TRAINER = Group({
    "max_epochs": POSITIVE,
    "clip_grad_norm": optional(number(0, lo_open=True)),
    # fp16 needs loss scaling (a GradScaler) to train without underflow; the trainer has none
    "precision": one_of("fp32", "bf16", note=" (fp16 would need loss scaling, which the trainer "
                                            "does not do)"),
    "eval_splits": list_of(string(), min_len=1),
    "test_split": optional(string()),
    "check_every": POSITIVE,
    "stop_after_epochs": optional(POSITIVE),
    "reestimate_batches": NATURAL,
    "progress": BOOL,
    "protocol_epochs": optional(POSITIVE),
    "max_time": optional(number(0, lo_open=True)),
    "eval_batch_stats": BOOL,
    "divergence_margin": number(0, inf=True),  # inf: only non-finite losses diverge
    "select_on": optional(string()),
    "final_reestimate": BOOL,
    "stream_splits": list_of(string()),
    "stream_count": POSITIVE,
    "stream_chunk": POSITIVE,
    "eval_lengths": list_of(integer(2)),
}, required=("max_epochs",))

_SIZE = {"clip_grad_norm": number(0, lo_open=True), "epochs": POSITIVE,
         "decay": number(0, lo_open=True), "after_epoch": NATURAL, "every": POSITIVE,
         "dropout": PROBABILITY}
PROTOCOL = Group({
    "name": string(), "batch_size": POSITIVE, "eval_batch_size": POSITIVE, "eval_batch_stats": BOOL,
    **{size: Group(_SIZE, required=tuple(_SIZE)) for size in ("small", "medium", "large")},
}, required=("name", "batch_size", "eval_batch_size", "eval_batch_stats", "small", "medium", "large"))

# the char-PTB protocols (configs/protocol/cooijmans_*.yaml): what experiment=cooijmans_char_ptb reads
_CHAR_PROTOCOL = {
    "seq_len": POSITIVE, "examples": one_of(*EXAMPLES), "crop": one_of(*CROPS),
    "encoding": one_of(*ENCODINGS), "eval_batch_size": POSITIVE,
    "orthogonal": one_of(*ORTHOGONAL), "decoder_init": one_of(*DECODER_INITS),
    "learn_initial_state": BOOL, "cell_bias": BOOL, "eval_batch_stats": BOOL,
    "select_on": optional(string()), "final_reestimate": BOOL}
CHAR_PROTOCOL = Group({"name": string(), "task": one_of("char_ptb"),
                       "char": Group(_CHAR_PROTOCOL, required=tuple(_CHAR_PROTOCOL))},
                      required=("name", "task", "char"))

# configs/paths: the locations the data configs' directories are built from
PATHS = Group({"cache_dir": string()}, required=("cache_dir",))

# An experiment's published protocol (``paper:``): the values a run must have to be that protocol,
# by dotted key, and what no config value can say (a substitute corpus). A run whose resolved
# configuration differs from ``values`` is *scaled*, and its final.json lists each difference.
PAPER = Group({
    "source": string(),
    "values": Rule("a mapping of dotted configuration keys to the paper's values",
                   lambda v: isinstance(v, Mapping) and bool(v) and all(isinstance(k, str) for k in v)),
    "substitutes": optional(list_of(string())),
    # settings the paper leaves open: what bnrnn chose and why (the reports print them)
    "unstated": optional(Rule("a list of {setting, value, why} strings",
                              lambda v: isinstance(v, list) and all(
                                  isinstance(x, Mapping) and set(x) == {"setting", "value", "why"}
                                  and all(isinstance(x[k], str) and x[k] for k in x) for x in v))),
}, required=("source", "values"))

_LOCAL = {"root": optional(string()), "cache_dir": string(), "download": BOOL}
_BATCHES = {"batch_size": POSITIVE, "eval_batch_size": POSITIVE, "limit_batches": optional(POSITIVE)}
_SPEECH = {**_LOCAL, **_BATCHES, "shard_size": POSITIVE, "workers": POSITIVE,
           "max_frames": optional(POSITIVE), "sort_pool": POSITIVE, "batch_seed": SEED,
           "pad_multiple": optional(POSITIVE),
           "progress": BOOL}
# speech split -> PTB text split (bnrnn.data.speech.synthetic.TEXT_SPLITS)
SYNTHETIC_SPLITS = ("train", "dev", "test")

DATA = {
    "bnrnn.data.ptb.PTBWordData": Group({**_LOCAL, **_BATCHES, "bptt": POSITIVE}),
    "bnrnn.data.ptb_char.PTBCharData": Group({**_LOCAL, **_BATCHES, "seq_len": POSITIVE,
                                              "seed": SEED, "encoding": one_of(*ENCODINGS),
                                              "examples": one_of(*EXAMPLES), "crop": one_of(*CROPS)}),
    "bnrnn.data.speech.synthetic.SyntheticSpeechData": Group({
        **_SPEECH,
        "text_cache_dir": string(),
        "utterances": Group({s: POSITIVE for s in SYNTHETIC_SPLITS}, required=("train",)),
        "seed": SEED,
        "voices": optional(list_of(string(), min_len=1)),
        "variants": optional(list_of(string(nonempty=False), min_len=1)),  # "": the voice's own
        "rate": pair(POSITIVE),
        "pitch": pair(integer(0, 100)),
        "pitch_range": pair(integer(0, 100)),
        "min_words": POSITIVE,
        "workers": optional(POSITIVE),  # null: one process per available core
        "library": one_of("auto", "bundled", "system"),
    }),
    "bnrnn.data.speech.librispeech.LibriSpeechData": Group({
        **_SPEECH,
        "audio_dir": optional(string()),
        "labels_file": string(),
        "labels_sha1": optional(string()),
        "split_md5": Group({"train": string(), "test": string()}, nullable=True),
        "dev_fraction": PROBABILITY,
        "dev_seed": SEED,
    }),
}


def _norm_options(*, stats: bool = True) -> Group:
    """NormLSTM/NormRNN keyword options a model passes through (the others it sets itself)."""
    fields = {
        "stats": one_of(*STATS),
        "gamma_init": optional(number()),
        "max_steps": POSITIVE,
        "momentum": optional(number(0, 1, lo_open=True)),  # null: cumulative average
        "eps": number(0, lo_open=True),
        "backend": one_of(*BACKENDS),
        "forget_bias": optional(number()),
    }
    if not stats:
        del fields["stats"]
    return Group(fields, nullable=True)


_LSTM_NORMS = one_of(*VARIANTS)
MODEL = {
    "bnrnn.models.lm.WordLM": Group({
        "hidden_size": POSITIVE, "num_layers": POSITIVE, "dropout": PROBABILITY,
        "init_range": number(0, lo_open=True), "norm": _LSTM_NORMS, "norm_options": _norm_options()}),
    "bnrnn.models.char.CharRNN": Group({
        "embedding_size": POSITIVE, "hidden_size": POSITIVE, "num_layers": POSITIVE,
        "norm": one_of(*NormRNN.norms_allowed), "norm_options": _norm_options()}),
    "bnrnn.models.char.CharLSTM": Group({
        "hidden_size": POSITIVE, "num_layers": POSITIVE, "norm": _LSTM_NORMS,
        "embedding_size": optional(POSITIVE), "norm_options": _norm_options(),
        "orthogonal": one_of(*ORTHOGONAL), "decoder_init": one_of(*DECODER_INITS),
        "learn_initial_state": BOOL, "cell_bias": BOOL}),
    "bnrnn.models.speech.FramewiseClassifier": Group({
        "hidden_size": POSITIVE, "num_layers": POSITIVE, "dropout": PROBABILITY, "norm": _LSTM_NORMS,
        "stats": one_of(*STATS), "norm_options": _norm_options(stats=False)}),  # stats: its own key
}

_LR = number(0, lo_open=True)
_BETAS = Rule("[beta1, beta2], each a number in [0, 1)",
              lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(PROBABILITY.ok(b) for b in v))
OPTIM = {
    "torch.optim.SGD": Group({
        "lr": _LR, "momentum": PROBABILITY, "dampening": number(0, 1), "weight_decay": number(0),
        "nesterov": BOOL, "maximize": BOOL, "foreach": optional(BOOL), "differentiable": BOOL,
        "fused": optional(BOOL)}),
    "torch.optim.Adam": Group({
        "lr": _LR, "betas": _BETAS,
        "eps": number(0, lo_open=True), "weight_decay": number(0), "amsgrad": BOOL,
        "foreach": optional(BOOL), "maximize": BOOL, "capturable": BOOL, "differentiable": BOOL,
        "fused": optional(BOOL), "decoupled_weight_decay": BOOL}),
}

SCHEDULE = {
    # decay=inf is allowed: it forces a divergence (the tests of the diverged status use it)
    "bnrnn.schedules.decay_after": Group({
        "decay": number(0, lo_open=True, inf=True), "after_epoch": NATURAL, "every": POSITIVE},
        required=("decay", "after_epoch")),
}

LOGGER = {
    "bnrnn.loggers.NullLogger": Group({}),
    "bnrnn.loggers.WandbLogger": Group({
        "project": string(), "entity": optional(string()), "group": optional(string()),
        "tags": optional(list_of(string())), "name": optional(string()),
        "mode": one_of("online", "offline", "disabled", "shared", "dryrun", "run")}),  # wandb's own
}

# population training (bnrnn/population_run.py): one member per seed and per value of each
# list; every list has one value per member
def _members(item: Rule) -> Rule:
    return optional(list_of(item, min_len=1))


POPULATION = Group({
    "seeds": _members(SEED),
    "member_dir": string() | list_of(string(), min_len=1),  # a pattern, or one name per member
    "optim": Group({"lr": _members(number(0, lo_open=True)), "momentum": _members(number(0)),
                    "dampening": _members(number(0)), "weight_decay": _members(number(0)),
                    "nesterov": _members(BOOL), "betas": _members(_BETAS),
                    "eps": _members(number(0, lo_open=True)), "amsgrad": _members(BOOL)}),
    "schedule": Group({"decay": _members(number(0, lo_open=True)), "after_epoch": _members(NATURAL),
                       "every": _members(POSITIVE)}),
    "trainer": Group({"clip_grad_norm": _members(optional(number(0, lo_open=True)))}),
}, required=("seeds", "member_dir", "optim", "schedule", "trainer"))

GROUPS = {"data": DATA, "model": MODEL, "optim": OPTIM, "schedule": SCHEDULE, "logger": LOGGER}


# -------------------------------------------------------------------------------- checking
def _check_group(node: Any, group: Group, prefix: str, skip: tuple[str, ...] = ()) -> None:
    if not isinstance(node, Mapping):
        raise ConfigError(prefix, f"must be a mapping with keys {', '.join(group.fields)}", node)
    for key, value in node.items():
        if key in skip:
            continue
        full = f"{prefix}.{key}"
        if key not in group.fields:
            close = difflib.get_close_matches(str(key), group.fields, n=1)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            allowed = ", ".join(group.fields) if group.fields else "none"
            raise ConfigError(full, f"unknown key{hint}; {prefix} takes: {allowed}", value)
        rule = group.fields[key]
        if isinstance(rule, Group):
            if not (value is None and rule.nullable):
                _check_group(value, rule, full)
        elif not rule.ok(value):
            raise ConfigError(full, f"must be {rule.what}", value)
    for key in group.required:
        if key not in node:
            rule = group.fields[key]
            what = rule.what if isinstance(rule, Rule) else "a mapping"
            raise ConfigError(f"{prefix}.{key}", f"is missing; must be {what}")


def _check_target(node: Any, name: str, schemas: dict[str, Group]) -> None:
    if node is None or (isinstance(node, Mapping) and not node):
        if name == "schedule":
            return  # schedule=none: a constant learning rate
        raise ConfigError(name, f"must be set; {name}=<one of configs/{name}/>", node)
    if not isinstance(node, Mapping):
        raise ConfigError(name, "must be a mapping with a _target_", node)
    target = node.get("_target_")
    if target is None:  # e.g. an experiment's schedule values with schedule=none
        options = sorted(p.stem for p in (CONFIG_DIR / name).glob("*.yaml"))
        raise ConfigError(f"{name}._target_", f"is missing beside {', '.join(node)}; choose "
                          f"{name}=<{'|'.join(options)}>")
    if target not in schemas:
        raise ConfigError(f"{name}._target_", f"must be one of {', '.join(schemas)}", target)
    _check_group(node, schemas[target], name, skip=META)


def _resolve(cfg: DictConfig | Mapping) -> dict:
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(e.full_key or "?", "is not set (???); give it on the command line") from None
    except OmegaConfBaseException as e:
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise ConfigError(e.full_key or "?", f"cannot be resolved: {msg}") from None


def data_splits(data: Mapping) -> tuple[str, ...]:
    """The splits a data configuration provides, known before the data is built."""
    target = data.get("_target_")
    if target == "bnrnn.data.speech.synthetic.SyntheticSpeechData":
        return tuple(data.get("utterances") or SYNTHETIC_SPLITS)
    if target == "bnrnn.data.speech.librispeech.LibriSpeechData":
        return ("train", "dev", "test") if data.get("dev_fraction", 0.1) > 0 else ("train", "test")
    return ("train", "valid", "test")


def _check_cross(c: dict) -> None:
    """Rules between keys, each one the first error the run would otherwise meet later."""
    # the device must exist here: a run on a missing GPU fails only after the data is built
    device = c.get("device", "auto")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "CUDA is not available here; allowed: auto, cpu", device)
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}", device)

    splits = data_splits(c["data"])
    trainer = c["trainer"]
    for i, split in enumerate(trainer.get("eval_splits", ("valid",))):
        if split not in splits:
            raise ConfigError(f"trainer.eval_splits[{i}]", f"must be one of this data's splits: "
                              f"{', '.join(splits)}", split)
    test = trainer.get("test_split", "test")
    if test is not None and test not in splits:
        raise ConfigError("trainer.test_split", f"must be null or one of this data's splits: "
                          f"{', '.join(splits)}", test)

    _check_evaluation(c, splits)

    model = c["model"]
    norm = model.get("norm", "none")
    options = model.get("norm_options") or {}
    if options.get("backend") == "native" and norm != "none":
        raise ConfigError("model.norm_options.backend", f"native (cuDNN/ATen) exists only for "
                          f"model.norm=none, not {norm}; allowed: auto, fused, reference", "native")
    stats_key = "model.stats" if "stats" in model else "model.norm_options.stats"
    stats = model.get("stats", options.get("stats", "frame"))
    applies = model.get("_target_") != "bnrnn.models.speech.FramewiseClassifier" or norm != "none"
    if stats == "sequence" and applies and VARIANTS[norm].ih is None:
        raise ConfigError(stats_key, f"sequence statistics apply to the input term only, which "
                          f"model.norm={norm} does not normalize; allowed: frame", stats)

    if model.get("cell_bias") and VARIANTS[norm].cell is None and \
            options.get("backend") in ("native", "fused"):
        raise ConfigError("model.norm_options.backend", "model.cell_bias=true runs on the reference "
                          "loop only; allowed: auto, reference", options.get("backend"))

    optim = c["optim"]
    if optim.get("nesterov") and (optim.get("momentum", 0) <= 0 or optim.get("dampening", 0) != 0):
        raise ConfigError("optim.nesterov", "needs optim.momentum > 0 and optim.dampening=0", True)


def check_device(c: Mapping, device) -> None:
    """What the configuration asks of the device it will run on (``device``, resolved), checked
    before the run directory is claimed: the fused kernels need CUDA (or Triton's interpreter,
    which tests set)."""
    backend = (c["model"].get("norm_options") or {}).get("backend")
    if backend == "fused" and device.type != "cuda":
        from bnrnn.nn import fused
        if not (fused.available() and fused.interpreting()):
            raise ConfigError("model.norm_options.backend", f"fused runs Triton kernels on a CUDA "
                              f"device; this run's device is {device.type}: use auto (the "
                              f"reference loop here) or reference", "fused")


def check_data_files(c: Mapping) -> None:
    """What the configuration asks of this machine's files, checked before the run directory is
    claimed: ``data.root`` is a directory holding the data's files, and without a root and with
    ``data.download=false`` the cache holds them (else the run would fail only once claimed,
    recorded as a failed run)."""
    data = c.get("data") or {}
    known = None
    if "_target_" in data:  # the data class says which files it reads (``local_files``)
        local_files = _target_has(data, "local_files")[1]
        known = local_files(data) if local_files is not None else None
    if data.get("audio_dir") is not None and not Path(data["audio_dir"]).expanduser().is_dir():
        raise ConfigError("data.audio_dir", "is not a directory; point it at LibriSpeech/"
                          "train-clean-100 (layout <spk>/<chapter>/<utt>.flac), or set "
                          "data.audio_dir=null", data["audio_dir"])
    if known is None:
        return
    names, cache_key = known
    root = data.get("root")
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            why = "is a file, not a directory" if path.exists() else "does not exist"
            raise ConfigError("data.root", f"{why}; point it at a directory holding "
                              f"{', '.join(names)}, or set data.root=null to use data.{cache_key}",
                              root)
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ConfigError("data.root", f"holds no {', '.join(missing)}; point it at a directory "
                              f"holding {', '.join(names)}, or set data.root=null to use "
                              f"data.{cache_key}", root)
    elif data.get("download") is False:
        cache = Path(data[cache_key]).expanduser()
        missing = [n for n in names if not (cache / n).is_file()]
        if missing:
            raise ConfigError("data.download", f"data.{cache_key}={cache} holds no "
                              f"{', '.join(missing)}; set data.download=true, or data.root=<a "
                              f"directory holding them>", False)


_MISSING = object()


def _lookup(c: Mapping, dotted: str) -> Any:
    node: Any = c
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def deviations(c: Mapping) -> list[str]:
    """How a resolved configuration departs from its experiment's ``paper:`` values, one line per
    key (``model.hidden_size = 128 (protocol: 250)``); empty without ``paper:`` or when it matches.
    Numbers compare by value (1e-4 == 0.0001), lists element by element."""
    paper = c.get("paper") or {}
    found = []
    for key, want in (paper.get("values") or {}).items():
        have = _lookup(c, key)
        if have is _MISSING:
            found.append(f"{key} not set (protocol: {want!r})")
        elif have != want:
            found.append(f"{key} = {have!r} (protocol: {want!r})")
    return found
def _target_has(node: Mapping, attribute: str) -> tuple[bool, Any]:
    """Whether the class a group's ``_target_`` names has ``attribute`` (and its value)."""
    try:
        cls = get_object(node["_target_"])
    except Exception:  # an unknown target is reported by its own group's check
        return True, None
    return hasattr(cls, attribute), getattr(cls, attribute, None)


def _check_evaluation(c: dict, splits: tuple[str, ...]) -> None:
    """Model selection and whole-split evaluation against the model and data they need."""
    trainer, model, data = c["trainer"], c["model"], c["data"]
    select = trainer.get("select_on")
    if select is not None:
        metric = select.removeprefix("batchstat_")
        known, names = _target_has(model, "metric_names")
        if known and names is not None and metric not in names:
            raise ConfigError("trainer.select_on", f"must be null or a metric of {model['_target_']}, "
                              f"optionally prefixed batchstat_: {', '.join(names)}", select)
        if select.startswith("batchstat_") and not trainer.get("eval_batch_stats", False):
            raise ConfigError("trainer.select_on", "a batchstat_ metric needs "
                              "trainer.eval_batch_stats=true (the batch-statistics evaluation)", select)
    streams, lengths = trainer.get("stream_splits") or [], trainer.get("eval_lengths") or []
    if not (streams or lengths):
        return
    key = "trainer.stream_splits" if streams else "trainer.eval_lengths"
    for node, attribute, what in ((model, "score", "model"), (data, "stream", "data")):
        if not _target_has(node, attribute)[0]:
            raise ConfigError(key, f"whole-split evaluation needs a language model and its data "
                              f"(PTB words or characters); {what}={node['_target_']} has no "
                              f"{attribute}()", streams or lengths)
    for i, split in enumerate(streams):
        if split not in splits:
            raise ConfigError(f"trainer.stream_splits[{i}]", f"must be one of this data's splits: "
                              f"{', '.join(splits)}", split)
    if lengths and trainer.get("test_split", "test") is None:
        raise ConfigError("trainer.eval_lengths", "evaluates the test split by length; set "
                          "trainer.test_split", lengths)


def validate(cfg: DictConfig | Mapping) -> dict:
    """Check every key of the composed configuration; returns the resolved configuration.
    Raises :class:`ConfigError` (one line: key, value, what is allowed) at the first bad key."""
    c = _resolve(cfg)
    groups = {*GROUPS, "trainer", "protocol", "paths", "paper", "population"}
    for key, value in c.items():
        if key in groups:
            continue
        if key not in TOP:
            close = difflib.get_close_matches(str(key), [*TOP, *groups], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(key, f"unknown key{hint}; allowed: {', '.join([*TOP, *sorted(groups)])}",
                              value)
        if not TOP[key].ok(value):
            raise ConfigError(key, f"must be {TOP[key].what}", value)
    # the protocol first: its values reach other groups by interpolation, and an error should
    # name the key that was set (protocol.small.epochs), not the one that copies it
    if c.get("protocol") is not None:  # PTB experiments: configs/protocol/
        char = isinstance(c["protocol"], Mapping) and c["protocol"].get("task") == "char_ptb"
        _check_group(c["protocol"], CHAR_PROTOCOL if char else PROTOCOL, "protocol")
    if c.get("paths") is not None:
        _check_group(c["paths"], PATHS, "paths")
    if c.get("population") is not None:
        _check_group(c["population"], POPULATION, "population")
    for name, schemas in GROUPS.items():
        _check_target(c.get(name), name, schemas)
    if c.get("trainer") is None:
        raise ConfigError("trainer", "must be set; trainer=default")
    _check_group(c["trainer"], TRAINER, "trainer")
    _check_cross(c)
    if c.get("paper") is not None:  # last: a missing key itself is named by its own group first
        _check_group(c["paper"], PAPER, "paper")
        for key in c["paper"]["values"]:
            if _lookup(c, key) is _MISSING:
                raise ConfigError(f"paper.values.{key}", "names no key of the configuration; "
                                  "use the dotted path of the value it pins (e.g. optim.lr)", key)
    return c


def _split_size(data: Any, split: str) -> tuple[str, int] | None:
    """What a data object's split holds, in its own unit, and the largest batch size that still
    gives one batch of it; None when the object does not say."""
    try:
        if hasattr(data, "columns"):  # PTB words: B columns of N // B tokens, >= 2 for a window
            n = int(data.corpus[split].numel())
            return f"{n} tokens", n // 2
        if hasattr(data, "sequences"):  # PTB characters
            n = len(data.sequences[split][0])
            return f"{n} sequences of data.seq_len", n
        if hasattr(data, "splits"):  # speech
            n = len(data.splits[split])
            return f"{n} utterances", n
    except (KeyError, AttributeError, TypeError):
        pass
    return None


def validate_data(cfg: DictConfig | Mapping, data: Any) -> None:
    """Check what only the built data object knows: every split the run uses exists and gives
    at least one batch (an evaluation batch larger than a split gives none, and the run would
    fail only when it first evaluates, after a whole epoch)."""
    trainer = cfg["trainer"]
    test = trainer.get("test_split", "test")
    uses = {"train": "data.batch_size"}
    for split in [*trainer.get("eval_splits", ("valid",)), *([test] if test else [])]:
        uses.setdefault(split, "data.eval_batch_size")
    for split, key in uses.items():
        try:
            n = data.num_batches(split)
        except KeyError:
            raise ConfigError("trainer.test_split" if split == test else "trainer.eval_splits",
                              "this data has no such split", split) from None
        if n == 0:
            value = cfg["data"][key.partition(".")[2]]
            size = _split_size(data, split)
            if size is None:
                raise ConfigError(key, f"gives no batch of the {split} split; must be smaller", value)
            holds, most = size
            allowed = f"allowed: 1 to {most}" if most >= 1 else "the split is too small for any batch"
            raise ConfigError(key, f"the {split} split holds {holds}, too few for one batch; "
                              f"{allowed}", value)


__all__ = ["ConfigError", "check_data_files", "validate", "validate_data"]
