"""The config schema (bnrnn.config): every bad value is refused at start with one line naming the
key, the value and what is allowed, before a run directory is claimed, data is read or a step
is taken; every shipped experiment passes."""
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from hydra.utils import get_object

from bnrnn import config as schema
from bnrnn.config import ConfigError, validate, validate_data
from bnrnn.contracts import DIMS
from bnrnn.engine import TrainerConfig
from bnrnn.nn.base import RecurrentStack
from bnrnn.train import run
from tests.helpers import CONFIG_DIR, cli, make_cfg

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PROTOCOLS = sorted(p.stem for p in (Path(CONFIG_DIR) / "protocol").glob("*.yaml"))
CHAR_PROTOCOLS = [p for p in PROTOCOLS
                  if "task: char_ptb" in (Path(CONFIG_DIR) / "protocol" / f"{p}.yaml").read_text()]
WORD_PROTOCOLS = [p for p in PROTOCOLS if p not in CHAR_PROTOCOLS]


def _experiment_cases():
    for e in EXPERIMENTS:
        protocols = {"ptb_": WORD_PROTOCOLS, "cooijmans_": CHAR_PROTOCOLS}
        family = next((v for k, v in protocols.items() if e.startswith(k)), [None])
        for p in family:
            yield [f"experiment={e}"] + ([f"protocol={p}"] if p else [])


@pytest.mark.parametrize("overrides", list(_experiment_cases()), ids=" ".join)
def test_every_experiment_validates(overrides):
    resolved = validate(make_cfg(overrides))
    assert resolved["trainer"]["max_epochs"] >= 1  # interpolations (${protocol...}) resolved


@pytest.mark.parametrize("overrides", [
    [],  # config.yaml's defaults alone
    ["logger=wandb"],
    ["experiment=ptb_small", "optim=adam"],
    ["experiment=grid_char_rnn", "schedule=decay_after"],
    # the edges of each range are allowed
    ["experiment=ptb_small", "optim.momentum=0", "model.dropout=0", "data.limit_batches=1",
     "trainer.precision=bf16", "device=cpu", "threads=1", "trainer.clip_grad_norm=null",
     "schedule.after_epoch=0", "trainer.reestimate_batches=0", "seed=0"],
    ["experiment=ptb_small", "optim.lr=1e6", "schedule.decay=inf", "++trainer.divergence_margin=inf"],
    ["experiment=speech_synthetic", "model.norm=bn_input", "data.max_frames=null",
     "~data.utterances.dev", "~data.utterances.test", "trainer.eval_splits=[train]",
     "trainer.test_split=null"],
    ["experiment=cooijmans_char_ptb", "model.norm=bn_recurrent", "model.embedding_size=16"],
], ids=lambda o: " ".join(o) or "defaults")
def test_good_values_pass(overrides):
    validate(make_cfg(overrides))


# (overrides on experiment=ptb_small unless another experiment is given, the key the line
# names with its value, what it must say is allowed)
BAD = [
    # the cases that used to fail late or not at all
    (["trainer.max_epochs=abc"], "trainer.max_epochs=abc", "an integer >= 1"),
    (["data.batch_size=-4"], "data.batch_size=-4", "an integer >= 1"),
    (["data.bptt=0"], "data.bptt=0", "an integer >= 1"),
    (["model.hidden_size=0"], "model.hidden_size=0", "an integer >= 1"),
    (["trainer.precision=fp16"], "trainer.precision=fp16", "one of fp32, bf16"),
    (["data.limit_batches=0"], "data.limit_batches=0", "null or an integer >= 1"),
    (["device=gpu"], "device=gpu", "auto, cpu, cuda or cuda:<index>"),
    (["optim.momentum=2"], "optim.momentum=2", "a number in [0, 1)"),
    (["optim.lr=0"], "optim.lr=0", "a finite number > 0"),
    # types
    (["data.batch_size=4.0"], "data.batch_size=4.0", "an integer >= 1"),
    (["data.batch_size=true"], "data.batch_size=true", "an integer >= 1"),
    (["model.dropout=high"], "model.dropout=high", "a number in [0, 1)"),
    (["quiet=1"], "quiet=1", "true or false"),
    (["data.root=123"], "data.root=123", "null or a non-empty string"),
    (["trainer.eval_splits=valid"], "trainer.eval_splits=valid", "a list of at least one"),
    # unknown keys (Hydra refuses an unknown key only without "+")
    (["+trainer.foo=1"], "trainer.foo=1", "unknown key; trainer takes: max_epochs"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch=3", "did you mean trainer.max_epochs?"),
    (["+foo=1"], "foo=1", "unknown key; allowed: name, seed"),
    (["+model.norm_options.bogus=1"], "model.norm_options.bogus=1", "model.norm_options takes: stats"),
    (["+optim.betas=[0.9,0.99]"], "optim.betas=[0.9, 0.99]", "optim takes: lr, momentum"),
    # top level
    (["seed=-1"], "seed=-1", "an integer in [0, 4294967295]"),
    (["threads=0"], "threads=0", "null or an integer >= 1"),
    (["name="], "name=''", "a non-empty string"),
    (["device=cuda:x"], "device=cuda:x", "auto, cpu, cuda or cuda:<index>"),
    # trainer
    (["trainer.max_epochs=0"], "trainer.max_epochs=0", "an integer >= 1"),
    (["trainer.max_epochs=???"], "trainer.max_epochs", "is not set"),
    (["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm=0", "null or a finite number > 0"),
    (["trainer.check_every=0"], "trainer.check_every=0", "an integer >= 1"),
    (["trainer.max_time=-1"], "trainer.max_time=-1", "null or a finite number > 0"),
    (["trainer.reestimate_batches=-1"], "trainer.reestimate_batches=-1", "an integer >= 0"),
    (["trainer.eval_splits=[dev]"], "trainer.eval_splits[0]=dev", "train, valid, test"),
    (["trainer.test_split=dev"], "trainer.test_split=dev", "null or one of this data's splits"),
    # optimizer
    (["optim.lr=-1"], "optim.lr=-1", "a finite number > 0"),
    (["optim.lr=inf"], "optim.lr=inf", "a finite number > 0"),
    (["optim.lr=nan"], "optim.lr=nan", "a finite number > 0"),
    (["optim.momentum=1"], "optim.momentum=1", "a number in [0, 1)"),
    (["+optim.nesterov=true"], "optim.nesterov=true", "optim.momentum > 0"),
    (["optim=adam", "+optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0]", "each a number in [0, 1)"),
    (["optim=adam", "+optim.eps=0"], "optim.eps=0", "a finite number > 0"),
    (["optim._target_=torch.optim.AdamW"], "optim._target_=torch.optim.AdamW", "torch.optim.SGD"),
    # schedule
    (["schedule.every=0"], "schedule.every=0", "an integer >= 1"),
    (["schedule.after_epoch=-1"], "schedule.after_epoch=-1", "an integer >= 0"),
    (["schedule.decay=0"], "schedule.decay=0", "a number > 0 (inf allowed)"),
    (["schedule=none"], "schedule._target_", "is missing beside decay, after_epoch, every; choose "
     "schedule=<decay_after|none>"),
    # protocol: named where it is set, not where it is copied to
    (["protocol.small.epochs=0"], "protocol.small.epochs=0", "an integer >= 1"),
    (["protocol.batch_size=-4"], "protocol.batch_size=-4", "an integer >= 1"),
    (["protocol.large.dropout=1"], "protocol.large.dropout=1", "a number in [0, 1)"),
    (["+protocol.small.foo=1"], "protocol.small.foo=1", "protocol.small takes: clip_grad_norm"),
    # data: PTB words, PTB characters, speech
    (["data.eval_batch_size=0"], "data.eval_batch_size=0", "an integer >= 1"),
    (["data.download=maybe"], "data.download=maybe", "true or false"),
    (["experiment=grid_char_rnn", "data.seq_len=0"], "data.seq_len=0", "an integer >= 1"),
    (["experiment=grid_char_rnn", "data.seed=-1"], "data.seed=-1", "an integer in [0, 4294967295]"),
    (["experiment=speech_synthetic", "data.max_frames=0"], "data.max_frames=0", "null or an integer >= 1"),
    (["experiment=speech_synthetic", "+data.utterances.valid=3"], "data.utterances.valid=3",
     "data.utterances takes: train, dev, test"),
    (["experiment=speech_synthetic", "~data.utterances.train"], "data.utterances.train", "is missing"),
    (["experiment=speech_synthetic", "data.pitch=[80,20]"], "data.pitch=[80, 20]", "min <= max"),
    (["experiment=speech_synthetic", "data.workers=0"], "data.workers=0", "an integer >= 1"),
    (["experiment=speech_synthetic", "~data.utterances.dev"], "trainer.eval_splits[0]=dev",
     "this data's splits: train"),
    (["experiment=speech_librispeech", "data.dev_fraction=1"], "data.dev_fraction=1", "a number in [0, 1)"),
    (["experiment=speech_librispeech", "data.dev_fraction=0"], "trainer.eval_splits[0]=dev",
     "this data's splits: train, test"),
    # models: word LM, char RNN, char LSTM, framewise
    (["model.num_layers=0"], "model.num_layers=0", "an integer >= 1"),
    (["model.dropout=1.0"], "model.dropout=1.0", "a number in [0, 1)"),
    (["model.init_range=0"], "model.init_range=0", "a finite number > 0"),
    (["model.norm=bn"], "model.norm=bn", "one of none, bn_input, bn_recurrent, ln"),
    (["model.norm_options.backend=cudnn"], "model.norm_options.backend=cudnn", "one of auto, reference"),
    (["model.norm=ln", "model.norm_options.backend=native"], "model.norm_options.backend=native",
     "allowed: auto, fused, reference"),
    (["model.norm_options.stats=sequence"], "model.norm_options.stats=sequence", "allowed: frame"),
    (["+model.norm_options.momentum=0"], "model.norm_options.momentum=0", "null or a number in (0, 1]"),
    (["experiment=grid_char_rnn", "model.norm=ln"], "model.norm=ln", "one of none, bn_input, bn_sum"),
    (["experiment=grid_char_rnn", "model.embedding_size=0"], "model.embedding_size=0", "an integer >= 1"),
    (["experiment=cooijmans_char_ptb", "model.embedding_size=0"], "model.embedding_size=0",
     "null or an integer >= 1"),
    (["experiment=cooijmans_char_ptb", "model.norm_options.max_steps=0"],
     "model.norm_options.max_steps=0", "an integer >= 1"),
    (["experiment=cooijmans_char_ptb", "model.orthogonal=blocks"], "model.orthogonal=blocks",
     "one of per_gate, whole"),
    (["experiment=cooijmans_char_ptb", "model.cell_bias=true", "model.norm_options.backend=fused"],
     "model.norm_options.backend=fused", "allowed: auto, reference"),
    (["experiment=cooijmans_char_ptb", "protocol.char.crop=sometimes"], "protocol.char.crop=sometimes",
     "one of none, random"),
    (["experiment=cooijmans_char_ptb", "trainer.select_on=loss"], "trainer.select_on=loss",
     "ce, bpc, err"),
    (["experiment=cooijmans_char_ptb", "protocol=cooijmans_code", "trainer.eval_batch_stats=false"],
     "trainer.select_on=batchstat_err", "needs trainer.eval_batch_stats=true"),
    (["experiment=cooijmans_char_ptb", "trainer.stream_splits=[dev]"], "trainer.stream_splits[0]=dev",
     "one of this data's splits"),
    (["experiment=speech_synthetic", "trainer.stream_splits=[test]"], "trainer.stream_splits=[test]",
     "has no score()"),
    (["experiment=cooijmans_char_ptb", "trainer.eval_lengths=[1]"], "trainer.eval_lengths=[1]",
     "a list of integer >= 2"),
    (["experiment=cooijmans_char_ptb", "data.crop=sometimes"], "data.crop=sometimes", "one of none, random"),
    (["experiment=cooijmans_char_ptb", "data.encoding=npz"], "data.encoding=npz", "one of bnrnn, cooijmans"),
    (["experiment=speech_synthetic", "model.stats=utterance"], "model.stats=utterance",
     "one of frame, sequence"),
    (["experiment=speech_synthetic", "+model.norm_options.stats=frame"], "model.norm_options.stats=frame",
     "unknown key"),  # the framewise model sets the statistics itself (model.stats)
    # paths
    (["paths.cache_dir="], "paths.cache_dir=''", "a non-empty string"),
    (["+paths.data_dir=/data"], "paths.data_dir=/data", "paths takes: cache_dir"),
    # logger
    (["logger=wandb", "logger.mode=loud"], "logger.mode=loud", "one of online, offline, disabled"),
]


@pytest.mark.parametrize("overrides,named,allowed", BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_bad_value_is_refused_with_one_line(overrides, named, allowed):
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=ptb_small", *overrides]
    with pytest.raises(ConfigError) as e:
        validate(make_cfg(overrides))
    message = str(e.value)
    assert "\n" not in message and message.startswith("config error: ")
    assert f" {named}:" in message, message  # the key, with its value
    assert allowed in message, message


def test_cuda_device_is_refused_where_there_is_none():
    import torch

    if torch.cuda.is_available():
        cfg = make_cfg(["experiment=ptb_small", f"device=cuda:{torch.cuda.device_count()}"])
        with pytest.raises(ConfigError, match=r"device=cuda:\d+: this machine has"):
            validate(cfg)
    else:
        with pytest.raises(ConfigError, match="device=cuda: CUDA is not available here; allowed: auto, cpu"):
            validate(make_cfg(["experiment=ptb_small", "device=cuda"]))


def test_refused_before_run_dir_and_data(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNRNN_CACHE", str(cache))
    run_dir = tmp_path / "run"
    # a data.root that does not exist: the config error comes first, not a data error
    cfg = make_cfg(["experiment=ptb_small", "data.root=/nonexistent/ptb", "data.batch_size=-4"])
    with pytest.raises(ConfigError, match="data.batch_size=-4"):
        run(cfg, run_dir)
    cfg = make_cfg(["experiment=ptb_small", "data.batch_size=-4"])  # would download into cache
    with pytest.raises(ConfigError, match="data.batch_size=-4"):
        run(cfg, run_dir)
    assert not run_dir.exists() and not cache.exists()



@pytest.mark.parametrize("root,named,allowed", [
    ("nowhere", "data.root={tmp}/nowhere", "does not exist; point it at a directory holding "
     "ptb.train.txt, ptb.valid.txt, ptb.test.txt, or set data.root=null"),
    ("ptb/ptb.train.txt", "data.root={ptb}/ptb.train.txt", "is a file, not a directory"),
    ("ptb_char", "data.root={ptb_char}", "holds no ptb.train.txt, ptb.valid.txt, ptb.test.txt"),
])
def test_a_data_root_without_the_data_is_refused_before_the_run_directory(
        ptb_root, ptb_char_root, tmp_path, root, named, allowed):
    """A mistyped data.root used to be found only once the run directory was claimed: a
    traceback, and .hydra/ and a 'failed' final.json written for a run that never started."""
    roots = {"nowhere": tmp_path / "nowhere", "ptb/ptb.train.txt": ptb_root / "ptb.train.txt",
             "ptb_char": ptb_char_root}
    named = named.format(tmp=tmp_path, ptb=ptb_root, ptb_char=ptb_char_root)
    cfg = make_cfg(["experiment=ptb_small", f"data.root={roots[root]}", "data.download=false",
                    "quiet=true", "device=cpu"])
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert f" {named}:" in str(e.value) and allowed in str(e.value), str(e.value)
    assert not (tmp_path / "run").exists()


def test_no_download_and_an_empty_cache_is_refused_before_the_run_directory(tmp_path):
    cfg = make_cfg(["experiment=grid_char_rnn", f"paths.cache_dir={tmp_path / 'cache'}",
                    "data.download=false", "quiet=true", "device=cpu"])
    with pytest.raises(ConfigError, match=f"data.download=false: data.cache_dir={tmp_path}/cache/"
                       "ptb_char holds no ptb.char.train.txt, .*set data.download=true"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_cli_refuses_a_missing_data_root_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    p = cli(["experiment=ptb_small", f"data.root={tmp_path / 'nowhere'}", "data.download=false",
             "device=cpu", f"hydra.run.dir={out}"])
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stderr
    assert [line for line in p.stderr.splitlines() if line.strip()] == [
        f"bnrnn: config error: data.root={tmp_path / 'nowhere'}: does not exist; point it at a "
        "directory holding ptb.train.txt, ptb.valid.txt, ptb.test.txt, or set data.root=null to "
        "use data.cache_dir"]
    assert not any((out / f).exists() for f in ("final.json", "metrics.jsonl", ".hydra", "checkpoints"))

@pytest.mark.parametrize("key,split", [("eval_batch_size", "valid"), ("batch_size", "train")])
def test_batch_larger_than_a_split_is_refused_before_any_step(ptb_root, tmp_path, key, split):
    with open(ptb_root / f"ptb.{split}.txt", encoding="utf-8") as f:
        tokens = sum(len(line.split()) + 1 for line in f)  # one <eos> per line
    cfg = make_cfg(["experiment=ptb_small", f"data.root={ptb_root}", "quiet=true", "device=cpu",
                    f"data.{key}={tokens}"])
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path)
    assert str(e.value) == (f"config error: data.{key}={tokens}: the {split} split holds {tokens} "
                            f"tokens, too few for one batch; allowed: 1 to {tokens // 2}")
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("override,message", [
    ("data.seq_len=100000", "config error: data.seq_len=100000: the train split holds {train} "
     "symbols, too few for one sequence; allowed: 1 to {smallest}"),
    ("data.batch_size=100000", "config error: data.batch_size=100000: the train split holds "
     "{sequences} sequences of data.seq_len, too few for one batch; allowed: 1 to {sequences}"),
])
def test_a_char_corpus_too_small_for_the_run_is_refused_in_one_line(ptb_char_root, tmp_path,
                                                                    override, message):
    """PTBCharData refused these in its constructor with a ValueError, which the run recorded
    as failed (a traceback, final.json 'failed'); the CLI now says it in one line, exit 2."""
    from bnrnn.data.ptb_char import PTBCharCorpus

    corpus = PTBCharCorpus(root=str(ptb_char_root))
    symbols = {s: corpus[s].numel() for s in ("train", "valid", "test")}
    expected = message.format(train=symbols["train"], smallest=min(symbols.values()) - 1,
                              sequences=(symbols["train"] - 1) // 100)
    run_dir = tmp_path / "run"
    p = cli(["experiment=grid_char_rnn", f"data.root={ptb_char_root}", "data.seq_len=100",
             override, "model.hidden_size=8", "model.embedding_size=8", "device=cpu",
             "quiet=true", f"hydra.run.dir={run_dir}"])
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr, p.stderr
    assert [line for line in p.stderr.splitlines() if line.strip() and "WARNING" not in line] == [
        f"bnrnn: {expected}"]
    assert not any((run_dir / f).exists() for f in ("final.json", "metrics.jsonl", "checkpoints"))

def test_validate_data_names_a_missing_split():
    class Data:
        def num_batches(self, split):
            return {"train": 3, "valid": 1}[split]

    cfg = {"trainer": {"eval_splits": ["valid"], "test_split": "test"}, "data": {}}
    with pytest.raises(ConfigError, match="trainer.test_split=test: this data has no such split"):
        validate_data(cfg, Data())
    validate_data({**cfg, "trainer": {"eval_splits": ["valid"], "test_split": None}}, Data())


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    out = tmp_path / "run"
    p = cli(["experiment=ptb_small", "trainer.max_epochs=abc", "data.root=/nonexistent",
             f"hydra.run.dir={out}"])
    assert p.returncode == 2, p.stderr
    assert [line for line in p.stderr.splitlines() if line.strip()] == [
        "bnrnn: config error: trainer.max_epochs=abc: must be an integer >= 1"]
    assert "Traceback" not in p.stdout + p.stderr
    assert not any((out / f).exists() for f in ("final.json", "metrics.jsonl", ".hydra", "checkpoints"))


def test_cli_refuses_fp16(tmp_path):
    p = cli(["experiment=ptb_small", "trainer.precision=fp16", f"hydra.run.dir={tmp_path / 'run'}"])
    assert p.returncode == 2 and "Traceback" not in p.stdout + p.stderr
    assert p.stderr.strip() == ("bnrnn: config error: trainer.precision=fp16: must be one of fp32, "
                                "bf16 (fp16 would need loss scaling, which the trainer does not do)")


# ------------------------------------------------------------- the schema follows the code
PROVIDED = {"self", "params", "optimizer", "run_dir",  # passed by bnrnn.train, not configured
            *(key for keys in DIMS.values() for key in keys)}  # data.dims


@pytest.mark.parametrize("target,group", [
    (t, g) for table in schema.GROUPS.values() for t, g in table.items()])
def test_schema_has_every_argument_of_its_class(target, group):
    params = set(inspect.signature(get_object(target)).parameters) - PROVIDED
    assert set(group.fields) == params


def test_schema_has_every_trainer_option_and_norm_option():
    assert set(schema.TRAINER.fields) == {f.name for f in dataclasses.fields(TrainerConfig)}
    stack = set(inspect.signature(RecurrentStack).parameters)
    assert set(schema.MODEL["bnrnn.models.lm.WordLM"].fields["norm_options"].fields) <= stack
    from bnrnn.data.speech.synthetic import TEXT_SPLITS

    assert set(schema.SYNTHETIC_SPLITS) == set(TEXT_SPLITS)


def test_every_group_option_has_a_schema():
    for group in ("data", "model", "optim", "schedule", "logger"):
        for path in (Path(CONFIG_DIR) / group).glob("*.yaml"):
            target = (make_cfg([f"{group}={path.stem}"])[group] or {}).get("_target_")
            assert target is None or target in schema.GROUPS[group], path


@pytest.mark.parametrize("experiment", ["ptb_small", "grid_char_rnn", "speech_synthetic",
                                        "speech_librispeech"])
def test_every_data_cache_lies_under_paths_cache_dir(experiment, tmp_path):
    c = validate(make_cfg([f"experiment={experiment}", f"paths.cache_dir={tmp_path}"]))
    dirs = [v for k, v in c["data"].items() if k.endswith("cache_dir")]
    assert dirs and all(Path(d).parent == tmp_path for d in dirs)
    # where the cache is says nothing about what a run computes: a resumed run may move it
    from bnrnn.rundir import config_changes

    assert config_changes({k: v for k, v in c.items() if k != "paths"}, c) == []


def test_resolved_config_is_returned():
    c = validate(make_cfg(["experiment=ptb_small", "protocol=zaremba"]))
    assert c["data"]["batch_size"] == 20 and c["trainer"]["max_epochs"] == 13
    json.dumps(c)  # plain containers


def test_a_long_bad_value_is_shortened_in_the_one_line_error():
    from bnrnn.config import ConfigError

    message = str(ConfigError("paper.unstated", "unknown key", [{"setting": "x" * 50}] * 10))
    assert message.startswith("config error: paper.unstated=[") and "characters)" in message
    assert len(message) < 200
