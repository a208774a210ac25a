"""Population runs end to end (``population.seeds=[...]``, bnrnn/population_run.py): one process,
one ordinary run directory per member.

"Reproduces M single runs" means: member k's metrics rows, best epoch and test metrics are those
of ``python -m bnrnn.train <same overrides> seed=<seeds[k]>`` run alone — same initialisation
(its seed), same data order (PTB characters shuffle by data.seed = seed), same per-member
hyper-parameters. In float64 they agree to float64 rounding (the population's batched products
and reductions round differently from a single model's, by an ulp or so); a member's divergence
leaves the others bit-identical (float32) to a population without it.
"""
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bnrnn import checkpoint
from bnrnn.config import ConfigError
from bnrnn.engine import Diverged, Trainer
from bnrnn.io import read_jsonl
from bnrnn.population_run import without_population
from bnrnn.report.runs import load_runs
from bnrnn.train import run
from tests.helpers import corrupt_copy, make_cfg, strip_times, train

TIMES = {"epoch_time", "wall_time", "train_tokens_per_s", "tokens_per_s"}
# what differs between a member and its single run by nature: when and how it was launched
LAUNCH = {"started", "finished", "wall_time", "command", "overrides", "population", "hardware",
          "best", "git_revision"}


@pytest.fixture
def char(ptb_char_root):
    return ["experiment=grid_char_rnn", f"data.root={ptb_char_root}", "model.norm=bn_sum",
            "model.hidden_size=8", "model.embedding_size=6", "model.num_layers=2",
            "data.limit_batches=2", "data.seq_len=10", "data.batch_size=8", "data.eval_batch_size=64",
            "trainer.max_epochs=2", "quiet=true", "device=cpu", "trainer.check_every=1"]


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def member_dir(root, k):
    return root / f"member{k}"


def test_a_population_of_seeds_reproduces_the_single_runs(char, tmp_path, float64):
    seeds, lrs, clips = [1, 2], [0.42, 0.1], [1.0, "null"]
    run(make_cfg(char + [f"population.seeds={seeds}", f"population.optim.lr={lrs}",
                         f"population.trainer.clip_grad_norm=[{clips[0]},{clips[1]}]"]),
        tmp_path / "pop")
    for k, seed in enumerate(seeds):
        _, single, rows = train(char + [f"seed={seed}", f"optim.lr={lrs[k]}",
                                        f"trainer.clip_grad_norm={clips[k]}"], tmp_path / f"single{k}")
        d = member_dir(tmp_path / "pop", k)
        member = json.loads((d / "final.json").read_text())
        member_rows = read_jsonl(d / "metrics.jsonl")
        assert len(member_rows) == len(rows) == 2
        for a, b in zip(strip_times(rows), strip_times(member_rows)):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-13, abs=0), (k, key)
        assert {k_: v for k_, v in member.items() if k_ not in LAUNCH | {"test"}} == \
               {k_: v for k_, v in single.items() if k_ not in LAUNCH | {"test"}}
        for key, v in single["test"].items():
            assert member["test"][key] == pytest.approx(v, rel=1e-13)
        # the member's recorded configuration is its single run's, and its command is one
        config = yaml.safe_load((d / ".hydra/config.yaml").read_text())
        assert config == yaml.safe_load((tmp_path / f"single{k}/.hydra/config.yaml").read_text())
        assert "population" not in config and config["seed"] == seed
        assert member["overrides"][-3:] == [f"seed={seed}", f"optim.lr={lrs[k]}",
                                            f"trainer.clip_grad_norm={clips[k]}"]
        assert not any(o.startswith("population.") for o in member["overrides"])
        assert member["population"] == {"dir": str(tmp_path / "pop"), "member": k, "size": 2}
        # best.pt holds the member as an ordinary model
        best = checkpoint.load(d / "checkpoints/best.pt")["model"]
        single_best = checkpoint.load(tmp_path / f"single{k}/checkpoints/best.pt")["model"]
        assert best.keys() == single_best.keys()
        for key in best:
            torch.testing.assert_close(best[key], single_best[key], rtol=1e-11, atol=1e-13)
    runs = load_runs(tmp_path / "pop")  # the reports see two ordinary runs
    assert [r.final["seed"] for r in runs] == seeds



@pytest.fixture
def cooijmans(ptb_char_root):
    """A tiny experiment=cooijmans_char_ptb (Adam, one-hot input, learned h0 and c0) with its
    evaluations after training (streams, test by length, the final re-estimation)."""
    return ["experiment=cooijmans_char_ptb", f"data.root={ptb_char_root}",
            "model.hidden_size=8", "data.limit_batches=2", "data.seq_len=10", "data.batch_size=8",
            "data.eval_batch_size=64", "trainer.max_epochs=2", "quiet=true", "device=cpu",
            "trainer.check_every=1"]


@pytest.fixture
def char_lstm(cooijmans):
    """The tiny Cooijmans char-LSTM without the evaluations after training (faster)."""
    return cooijmans + ["trainer.stream_splits=[]", "trainer.eval_lengths=[]",
                        "trainer.final_reestimate=false"]


# bn_input rather than bn_recurrent: under the latter W_h h0 is one vector for the whole batch,
# its normalization removes it, and h0's gradient is rounding noise that Adam's normalized step
# amplifies; cell_bias: the official code's baseline, selected on the batch-statistics error
# rate as protocol=cooijmans_code does (without batch norms: the error rate)
@pytest.mark.parametrize("variant", [
    ["model.norm=bn_input"],
    ["model.norm=none", "model.cell_bias=true", "trainer.select_on=batchstat_err",
     "trainer.eval_batch_stats=true"],
], ids=["bn_input", "cell_bias"])
def test_an_adam_population_reproduces_the_single_runs(char_lstm, variant, tmp_path, float64):
    """optim=adam: each member its own lr and betas (population.optim.{lr,betas} lists), its own
    step count and moments, its own learned (h0, c0) (and cell bias β_c); rows, best epoch, test
    metrics and best weights are its single run's."""
    char_lstm = char_lstm + variant
    seeds, lrs, betas = [1, 2], [2e-3, 1e-2], ["[0.9,0.999]", "[0.8,0.99]"]
    run(make_cfg(char_lstm + [f"population.seeds={seeds}", f"population.optim.lr={lrs}",
                              f"population.optim.betas=[{betas[0]},{betas[1]}]"]), tmp_path / "pop")
    for k, seed in enumerate(seeds):
        _, single, rows = train(char_lstm + [f"seed={seed}", f"optim.lr={lrs[k]}",
                                             f"+optim.betas={betas[k]}"], tmp_path / f"single{k}")
        d = member_dir(tmp_path / "pop", k)
        member = json.loads((d / "final.json").read_text())
        member_rows = strip_times(read_jsonl(d / "metrics.jsonl"))
        assert len(member_rows) == len(rows) == 2
        for a, b in zip(strip_times(rows), member_rows):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-12, abs=0), (k, key)
        assert member["best"]["epoch"] == single["best"]["epoch"]
        assert member["selection"] == single["selection"]
        for key, v in single["test"].items():
            assert member["test"][key] == pytest.approx(v, rel=1e-12)
        best = checkpoint.load(d / "checkpoints/best.pt")["model"]
        single_best = checkpoint.load(tmp_path / f"single{k}/checkpoints/best.pt")["model"]
        assert best.keys() == single_best.keys() and {"h0", "c0"} <= best.keys()
        trained = ["h0", "c0"] + [k for k in best if k.endswith("norm_cell.bias")]
        assert len(trained) == (3 if "model.cell_bias=true" in variant else 2)
        assert min(best[s].abs().max() for s in trained) > 1e-4  # each was trained
        for key in best:
            torch.testing.assert_close(best[key], single_best[key], rtol=1e-10, atol=1e-12)
        config = yaml.safe_load((d / ".hydra/config.yaml").read_text())
        assert config["optim"] == {"_target_": "torch.optim.Adam", "lr": lrs[k],
                                   "betas": json.loads(betas[k])}
        assert config == yaml.safe_load((tmp_path / f"single{k}/.hydra/config.yaml").read_text())
        # the member's own overrides compose to its configuration (adam.yaml has no betas: +)
        own = member["overrides"][-3:]
        assert own == [f"seed={seed}", f"optim.lr={lrs[k]}", f"+optim.betas={betas[k]}"]
        composed = OmegaConf.to_container(without_population(make_cfg(char_lstm + own)))
        assert composed == config


def assert_fields_close(got: dict, want: dict, rel: float, where=()) -> None:
    """``got`` has ``want``'s keys and values: floats to ``rel``, mappings (a by-length table,
    the re-estimation's record) entry by entry, anything else exactly."""
    assert got.keys() == want.keys(), where
    for key, v in want.items():
        if isinstance(v, dict):
            assert_fields_close(got[key], v, rel, (*where, key))
        elif isinstance(v, float):
            assert got[key] == pytest.approx(v, rel=rel, abs=0), (*where, key)
        else:
            assert got[key] == v, (*where, key)


# each split as one stream read in chunks shorter than it; the test by length: 5 and 20 symbols
# (the limited test split's 1281 hold 256 and 64 examples), 2000 (none: reported null)
AFTER_TRAINING = ["model.norm=bn_input", "trainer.stream_chunk=300", "trainer.eval_lengths=[5,20,2000]"]


@pytest.mark.parametrize("protocol", ["cooijmans_text", "cooijmans_code"])
def test_a_population_runs_each_members_evaluations_after_training(cooijmans, protocol, tmp_path, float64):
    """experiment=cooijmans_char_ptb's evaluations at each member's best weights — the final
    re-estimation over its whole training split, then the test split, valid and test each as one
    stream (test_bpc_stream: the paper's number), the test by example length — are its single
    run's, field for field; a diverged member has none of them, as its single run has none."""
    common = cooijmans + [f"protocol={protocol}", *AFTER_TRAINING]
    seeds, lrs = [1, 2, 3], [2e-3, 1e-2, 1e3]  # the third diverges
    run(make_cfg(common + [f"population.seeds={seeds}", f"population.optim.lr={lrs}"]), tmp_path / "pop")
    for k, seed in enumerate(seeds):
        _, single, _ = train(common + [f"seed={seed}", f"optim.lr={lrs[k]}"], tmp_path / f"single{k}")
        member = json.loads((member_dir(tmp_path / "pop", k) / "final.json").read_text())
        # diverged_epoch: what a population adds to a diverged member's final.json
        assert_fields_close({f: v for f, v in member.items() if f not in LAUNCH | {"diverged_epoch"}},
                            {f: v for f, v in single.items() if f not in LAUNCH}, rel=1e-12, where=(k,))
        if k == 2:
            assert member["status"] == "diverged" and member["test"] is None
            assert "test_bpc_stream" not in member and "reestimated" not in member
            continue
        assert member["status"] == "completed"
        assert member["reestimated"] == {"split": "train", "batches": 2}
        assert {"valid_bpc_stream", "test_bpc_stream", "test_err_stream"} <= member.keys()
        by_length = member["test_bpc_by_length"]
        assert set(by_length) == {"5", "20", "2000", "whole"} and by_length["2000"] is None
        assert by_length["whole"] == member["test_bpc_stream"] > 0


def test_a_member_whose_final_evaluation_diverges_is_marked_diverged_alone(char_lstm, tmp_path, monkeypatch):
    """A non-finite loss in one member's evaluation after training marks that member diverged
    (no test, no stream fields); the other member completes with its own."""
    evaluate = Trainer.test_at_best

    def failing_for_member1(self):
        if self.run_dir.name == "member1":
            raise Diverged("non-finite test loss at epoch 0, step 0")
        return evaluate(self)

    monkeypatch.setattr(Trainer, "test_at_best", failing_for_member1)
    run(make_cfg(char_lstm + ["model.norm=bn_input", "trainer.final_reestimate=true",
                              "population.seeds=[1,2]"]), tmp_path)
    good, bad = (json.loads((member_dir(tmp_path, k) / "final.json").read_text()) for k in (0, 1))
    assert good["status"] == "completed" and good["test"] is not None and "reestimated" in good
    assert bad["status"] == "diverged" and "non-finite test loss" in bad["error"]
    assert bad["test"] is None and "reestimated" not in bad and bad["epochs_completed"] == 2


def test_a_diverging_member_leaves_the_others_bit_identical(char, tmp_path):
    """Member 1's learning rate makes it diverge; members 0 and 2 go on exactly as in a
    population of the two of them (float32, bit for bit)."""
    common = char + ["trainer.max_epochs=3", "data.limit_batches=3"]
    run(make_cfg(common + ["population.seeds=[5,6,7]", "population.optim.lr=[0.3,1e4,0.2]"]),
        tmp_path / "three")
    run(make_cfg(common + ["population.seeds=[5,7]", "population.optim.lr=[0.3,0.2]"]),
        tmp_path / "two")
    bad = json.loads((member_dir(tmp_path / "three", 1) / "final.json").read_text())
    assert bad["status"] == "diverged" and bad["diverged_epoch"] == 1 and "epoch 1" in bad["error"]
    assert bad["test"] is None and bad["epochs_completed"] == 0 and bad["best"] is None
    assert bad["step"] <= 3  # where it stopped in epoch 1 (of 3 batches), as its single run
    for k3, k2 in ((0, 0), (2, 1)):
        a, b = member_dir(tmp_path / "three", k3), member_dir(tmp_path / "two", k2)
        assert strip_times(read_jsonl(a / "metrics.jsonl")) == strip_times(read_jsonl(b / "metrics.jsonl"))
        fa, fb = (json.loads((x / "final.json").read_text()) for x in (a, b))
        assert fa["status"] == fb["status"] == "completed" and fa["test"] == fb["test"]
        sa, sb = (checkpoint.load(x / "checkpoints/best.pt")["model"] for x in (a, b))
        assert all(torch.equal(sa[key], sb[key]) for key in sa)



def test_a_population_failure_leaves_a_diverged_member_diverged(char, tmp_path, monkeypatch):
    """The disk fills in epoch 2, after member 1 diverged in epoch 1: the population fails,
    member 0 says failed, member 1 still says diverged (its outcome, with its epoch)."""
    from bnrnn import population_engine

    save = checkpoint.save

    def disk_full_at_epoch_2(path, state):
        if path.name == "last.pt" and state["epoch"] == 2:
            raise OSError(28, "No space left on device", str(path))
        save(path, state)

    monkeypatch.setattr(population_engine.checkpoint, "save", disk_full_at_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        run(make_cfg(char + ["trainer.max_epochs=3", "population.seeds=[5,6]",
                             "population.optim.lr=[0.3,1e4]"]), tmp_path)
    good, bad = (json.loads((member_dir(tmp_path, k) / "final.json").read_text()) for k in (0, 1))
    assert good["status"] == "failed" and "No space left" in good["error"]
    assert bad["status"] == "diverged" and bad["diverged_epoch"] == 1 and "epoch 1" in bad["error"]


@pytest.mark.parametrize("full, best_epoch", [("last.pt", 1), ("best.pt", 2)])
def test_a_resumed_population_tests_the_weights_of_each_members_best_epoch(char, tmp_path, monkeypatch,
                                                                         full, best_epoch):
    """The disk fills while epoch 2 (each member's better one) is written, before or after
    last.pt; resumed with a time box that lets no epoch start, each member is tested at the
    best epoch it reports, as an uninterrupted population of that many epochs tests it."""
    from bnrnn import population_engine

    pop = char + ["population.seeds=[1,2]"]
    run(make_cfg(pop + [f"trainer.max_epochs={best_epoch}"]), tmp_path / "ref")
    save = checkpoint.save

    def disk_full_at_epoch_2(path, state):
        if path.name == full and state["epoch"] == 2:
            raise OSError(28, "No space left on device", str(path))
        save(path, state)

    monkeypatch.setattr(population_engine.checkpoint, "save", disk_full_at_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        run(make_cfg(pop + ["trainer.max_epochs=3"]), tmp_path / "run")
    monkeypatch.undo()
    run(make_cfg(pop + ["trainer.max_epochs=3", "trainer.max_time=1e-6", "resume=true"]), tmp_path / "run")
    for k in (0, 1):
        ref, final = (json.loads((member_dir(tmp_path / d, k) / "final.json").read_text())
                      for d in ("ref", "run"))
        assert ref["best_epoch"] == final["best_epoch"] == best_epoch
        assert final["status"] == "completed" and final["test"] == ref["test"]

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_continues_the_whole_population(char, char_lstm, optimizer, tmp_path):
    """The whole population state (with Adam: each member's moments and step count, its
    betas) survives last.pt: resumed, every member goes on exactly as uninterrupted."""
    pop = (char if optimizer == "sgd" else char_lstm + ["population.optim.betas=[[0.9,0.999],[0.8,0.99]]"]) \
        + ["population.seeds=[1,2]", "trainer.max_epochs=3"]
    run(make_cfg(pop), tmp_path / "whole")
    run(make_cfg(pop + ["trainer.stop_after_epochs=1"]), tmp_path / "resumed")
    interrupted = json.loads((member_dir(tmp_path / "resumed", 0) / "final.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["epochs_completed"] == 1
    run(make_cfg(pop + ["resume=true"]), tmp_path / "resumed")
    for k in (0, 1):
        a, b = member_dir(tmp_path / "whole", k), member_dir(tmp_path / "resumed", k)
        assert strip_times(read_jsonl(a / "metrics.jsonl")) == strip_times(read_jsonl(b / "metrics.jsonl"))
        assert json.loads((b / "final.json").read_text())["status"] == "completed"
        final = json.loads((b / "final.json").read_text())
        assert [r["epoch"] for r in final["resumed"]] == [1]
    assert json.loads((member_dir(tmp_path / "resumed", 0) / "final.json").read_text())["started"] \
        == interrupted["started"]  # the run's start, not the continuation's
    if optimizer == "sgd":  # a complete population resumed again: nothing to do, nothing rewritten
        records = {k: (member_dir(tmp_path / "resumed", k) / "final.json").read_bytes() for k in (0, 1)}
        run(make_cfg(pop + ["resume=true"]), tmp_path / "resumed")
        assert records == {k: (member_dir(tmp_path / "resumed", k) / "final.json").read_bytes() for k in (0, 1)}



def test_a_resume_that_fails_before_continuing_leaves_every_record_as_it_was(char, tmp_path):
    """A population resume that cannot start (its data root holds a corrupt file) leaves the
    members' final.json and .hydra/ (and the population's) byte for byte: never 'failed with 0
    epochs'."""
    pop = char + ["population.seeds=[1,2]"]
    run_dir = tmp_path / "run"
    run(make_cfg(pop), run_dir)
    snapshot = lambda: {str(p.relative_to(run_dir)): p.read_bytes()  # noqa: E731
                        for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}
    before = snapshot()
    root = next(o for o in pop if o.startswith("data.root=")).split("=", 1)[1]
    corrupt = corrupt_copy(Path(root), tmp_path / "corrupt")
    moved = [o for o in pop if not o.startswith("data.root=")]
    with pytest.raises(Exception, match="checksum mismatch"):
        run(make_cfg(moved + [f"data.root={corrupt}", "data.download=false",
                              "trainer.max_epochs=3", "resume=true"]), run_dir)
    assert snapshot() == before
    assert json.loads((member_dir(run_dir, 0) / "final.json").read_text())["status"] == "completed"

def test_a_members_record_leaves_resume_out(char):
    """resume=true is how one invocation continues a population, not part of any member's run:
    a member's overrides (its final.json command, .hydra/) and configuration leave it out."""
    from bnrnn.population_run import plan

    overrides = ["population.seeds=[1,2]", "resume=true"]
    for member in plan(make_cfg(char + overrides), overrides):
        assert not any(o.startswith("resume") for o in member.overrides)
        assert member.cfg.resume is False and f"seed={member.seed}" in member.overrides


@pytest.mark.parametrize("overrides,key", [
    (["population.seeds=[1,2]", "population.optim.lr=[0.1,0.2,0.3]"], "population.optim.lr"),
    (["population.seeds=[1,2]", "optim._target_=torch.optim.Adagrad"], "optim"),
    (["population.seeds=[1,2]", "+optim.foreach=true"], "optim.foreach"),
    (["population.seeds=[1,1]", "population.member_dir='seed{seed}'"], "population.member_dir"),
    (["population.seeds=[1,2]", "population.schedule.decay=[0.5,0.5]"], "population.schedule"),
    (["population.seeds=[1,-2]"], "population.seeds"),
    (["population.seeds=3"], "population.seeds"),  # one value where a list belongs
    (["population.seeds=[1,2]", "population.trainer.clip_grad_norm=5"], "population.trainer.clip_grad_norm"),
    (["population.seeds=[1,2]", "model.norm_options.backend=native"], "model.norm_options.backend"),
    (["population.seeds=[1,2]", "data.root=/nonexistent/ptb_char"], "data.root"),
    # a member's value that only its own configuration refuses: named as the list it came from
    (["population.seeds=[1,2]", "population.optim.momentum=[0.9,1.5]"],
     r"population.optim.momentum=\[0.9, 1.5\]: member 1's value 1.5 must be a number in \[0, 1\)"),
    (["population.seeds=[1,2]", "population.optim.dampening=[0,2]"],
     r"population.optim.dampening=\[0, 2\]: member 1's value 2 must be a number in \[0, 1\]"),
    (["population.seeds=[1,2]", "population.optim.nesterov=[false,true]", "optim.momentum=0"],
     r"population.optim.nesterov=\[false, true\]: member 1's value true needs optim.momentum > 0"),
])
def test_bad_population_configs_are_refused_before_any_work(char, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"config error: {key}"):
        run(make_cfg(char + overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,key", [
    (["+optim.foreach=true"], "optim.foreach"),
    (["population.optim.momentum=[0.9,0.5]"], "population.optim.momentum"),
    (["population.optim.betas=[[0.9,0.999],[0.9,1.0]]"], "population.optim.betas"),
    (["population.optim.eps=[1e-8]"], "population.optim.eps"),
])
def test_bad_adam_population_configs_are_refused_before_any_work(char_lstm, tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=f"config error: {key}"):
        run(make_cfg(char_lstm + ["population.seeds=[1,2]"] + overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_ordinary_run_records_no_population_block(char, tmp_path):
    train(char + ["trainer.max_epochs=1"], tmp_path)
    assert "population" not in yaml.safe_load((tmp_path / ".hydra/config.yaml").read_text())


@pytest.mark.slow
def test_a_word_lm_population_with_per_member_schedules_reproduces_the_single_runs(ptb_root, tmp_path):
    """The word LM: one data order for every member (shared batches), the state carried across
    windows, each member its own learning rate and decay. WordLM's loss is float32 (its
    log-softmax), so members agree with their single runs to float32 rounding."""
    base = ["experiment=ptb_small", f"data.root={ptb_root}", "model.hidden_size=16",
            "data.limit_batches=4", "data.bptt=5", "data.batch_size=4", "quiet=true", "device=cpu",
            "trainer.max_epochs=3", "schedule=decay_after", "schedule.after_epoch=1"]
    lrs, decays = [1.0, 0.5], [0.5, 0.9]
    run(make_cfg(base + ["population.seeds=[1,2]", f"population.optim.lr={lrs}",
                         f"population.schedule.decay={decays}"]), tmp_path / "pop")
    for k, seed in enumerate([1, 2]):
        _, single, rows = train(base + [f"seed={seed}", f"optim.lr={lrs[k]}",
                                        f"schedule.decay={decays[k]}"], tmp_path / f"single{k}")
        member_rows = strip_times(read_jsonl(member_dir(tmp_path / "pop", k) / "metrics.jsonl"))
        assert [r["lr"] for r in member_rows] == [r["lr"] for r in rows]
        for a, b in zip(strip_times(rows), member_rows):
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-6), (k, key)


@pytest.fixture
def word_dropout(ptb_root):
    """A tiny PTB word LM with dropout 0.5 on its input, between its two layers and on its
    output: every draw of a training step is a dropout mask."""
    return ["experiment=ptb_small", f"data.root={ptb_root}", "model.hidden_size=8",
            "model.num_layers=2", "model.dropout=0.5", "data.limit_batches=3", "data.bptt=5",
            "data.batch_size=4", "quiet=true", "device=cpu", "trainer.max_epochs=2"]


def test_a_population_with_dropout_reproduces_each_members_single_run(word_dropout, tmp_path, float64):
    """Member k draws its dropout masks from its own stream, the one its single run draws from:
    its rows are its single run's to float32 rounding (WordLM's log-softmax; measured ≤ 5e-7
    relative), where one mask stream for the population moves them by up to 1e-2."""
    run(make_cfg(word_dropout + ["population.seeds=[1,2]"]), tmp_path / "pop")
    for k, seed in enumerate([1, 2]):
        _, single, rows = train(word_dropout + [f"seed={seed}"], tmp_path / f"single{k}")
        member_rows = strip_times(read_jsonl(member_dir(tmp_path / "pop", k) / "metrics.jsonl"))
        assert len(member_rows) == len(rows) == 2
        for a, b in zip(strip_times(rows), member_rows):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key] == pytest.approx(a[key], rel=2e-6), (k, key)


def test_a_word_lm_population_runs_its_members_final_reestimation_and_stream(word_dropout, tmp_path, float64):
    """PTB words (one data object for every member, state carried across batches), trained
    with dropout: each member's final re-estimation, test and test stream are its single run's,
    to the rounding of WordLM's float32 log-softmax (measured here: 4e-15 relative)."""
    common = word_dropout + ["model.norm=bn_input", "trainer.final_reestimate=true",
                             "trainer.stream_splits=[test]", "trainer.stream_chunk=7"]
    run(make_cfg(common + ["population.seeds=[1,2]"]), tmp_path / "pop")
    for k, seed in enumerate([1, 2]):
        _, single, _ = train(common + [f"seed={seed}"], tmp_path / f"single{k}")
        member = json.loads((member_dir(tmp_path / "pop", k) / "final.json").read_text())
        assert member["reestimated"] == single["reestimated"] == {"split": "train", "batches": 3}
        got, want = ({key: f[key] for key in ("test", "test_loss_stream", "test_ppl_stream")}
                     for f in (member, single))
        assert_fields_close(got, want, rel=2e-6, where=(k,))


def test_resume_continues_every_members_dropout_stream(word_dropout, tmp_path):
    """last.pt carries each member's stream: interrupted after epoch 1 and resumed, a population
    with dropout trains on exactly as the uninterrupted one (float32, bit for bit)."""
    pop = word_dropout + ["population.seeds=[1,2]", "trainer.max_epochs=3"]
    run(make_cfg(pop), tmp_path / "whole")
    run(make_cfg(pop + ["trainer.stop_after_epochs=1"]), tmp_path / "resumed")
    saved = checkpoint.load(tmp_path / "resumed/checkpoints/last.pt")["streams"]
    assert saved["device"] == "cpu" and len(saved["states"]) == 2
    run(make_cfg(pop + ["resume=true"]), tmp_path / "resumed")
    for k in (0, 1):
        a, b = member_dir(tmp_path / "whole", k), member_dir(tmp_path / "resumed", k)
        rows = strip_times(read_jsonl(b / "metrics.jsonl"))
        assert len(rows) == 3 and strip_times(read_jsonl(a / "metrics.jsonl")) == rows


def test_resume_from_a_checkpoint_without_streams_says_the_masks_change(word_dropout, tmp_path, caplog):
    """A last.pt written before populations had streams resumes, restarting the streams from
    the seeds, and the log says the masks are no longer the single runs'."""
    pop = word_dropout + ["population.seeds=[1,2]"]
    run(make_cfg(pop + ["trainer.stop_after_epochs=1"]), tmp_path)
    last = tmp_path / "checkpoints/last.pt"
    state = checkpoint.load(last)
    del state["streams"]
    checkpoint.save(last, state)
    run(make_cfg(pop + ["resume=true"]), tmp_path)
    assert "has no member streams" in caplog.text and "not their single runs'" in caplog.text
    assert json.loads((member_dir(tmp_path, 1) / "final.json").read_text())["status"] == "completed"
