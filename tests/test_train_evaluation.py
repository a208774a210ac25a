"""The trainer's final evaluation: selection on a metric other than the loss, population
statistics re-estimated over a whole split, and the whole-split (stream, by-length) metrics in
final.json, each against a computation written out here."""
import itertools

import pytest
import torch
from hydra.utils import instantiate

from bnrnn import checkpoint
from bnrnn.engine import Trainer, TrainerConfig
from bnrnn.evaluation import evaluate_by_length, evaluate_stream
from bnrnn.nn import SeqBatchNorm
from tests.helpers import make_cfg, train

TINY = ["model.hidden_size=8", "data.seq_len=12", "data.batch_size=8", "data.eval_batch_size=16",
        "data.limit_batches=3", "quiet=true", "device=cpu", "model.norm_options.backend=reference"]


def tiny(ptb_char_root, *more):
    return ["experiment=cooijmans_char_ptb", f"data.root={ptb_char_root}", *TINY, *more]


def test_selection_on_a_metric_other_than_the_loss(ptb_char_root, tmp_path, monkeypatch):
    """Scripted validation metrics where the error rate and the cross-entropy disagree: the best
    epoch, best.pt and the test evaluation follow trainer.select_on."""
    script = {1: {"ce": 2.0, "bpc": 2.9, "err": 0.50}, 2: {"ce": 1.9, "bpc": 2.7, "err": 0.60},
              3: {"ce": 1.8, "bpc": 2.6, "err": 0.55}}
    tested = []

    def scripted(self, split, reestimate=True):
        if split == "test":
            tested.append(self.model.decoder.bias.detach().clone())
            return {"ce": 0.0, "bpc": 0.0, "err": 0.0}
        return dict(script[self.epoch])

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    for select, best in ((None, 3), ("err", 1)):
        cfg = make_cfg(tiny(ptb_char_root, "trainer.max_epochs=3", "trainer.stream_splits=[]",
                            "trainer.eval_lengths=[]",
                            *([f"trainer.select_on={select}"] if select else [])))
        data = instantiate(cfg.data)
        model = instantiate(cfg.model, **data.dims)
        trainer = Trainer(model=model, data=data, optimizer=instantiate(cfg.optim, params=model.parameters()),
                          scheduler=None, config=TrainerConfig(**{**cfg.trainer, "progress": False}),
                          run_dir=tmp_path / str(select), device=torch.device("cpu"), info={"git_revision": "x"})
        final = trainer.fit()
        key = f"valid_{select or 'bpc'}"
        assert final["selection"] == key and final["best_epoch"] == best
        assert checkpoint.load(tmp_path / str(select) / "checkpoints" / "best.pt")["epoch"] == best
        saved = checkpoint.load(tmp_path / str(select) / "checkpoints" / "best.pt")["model"]
        assert torch.equal(tested[-1], saved["decoder.bias"])  # tested at the selected weights


@pytest.mark.parametrize("norm,key", [("bn_recurrent", "valid_batchstat_err"), ("none", "valid_err")])
def test_batchstat_selection_and_its_baseline(ptb_char_root, tmp_path, norm, key):
    """Selection on batch statistics (Cooijmans' code); a model without batch norms selects on
    the plain metric, which the batch-statistics evaluation would only repeat."""
    _, final, rows = train(tiny(ptb_char_root, f"model.norm={norm}", "trainer.max_epochs=2",
                                "trainer.select_on=batchstat_err", "trainer.eval_batch_stats=true"),
                           tmp_path)
    assert final["selection"] == key and final["status"] == "completed"
    assert final["best_epoch"] == min(rows, key=lambda r: r[key])["epoch"]


def batch_statistics_by_hand(model, batches):
    """Every SeqBatchNorm's per-step mean and unbiased variance, averaged over ``batches`` with
    the BNs in training mode: recorded from the inputs each BN receives, keyed by (the BN's
    place among the model's SeqBatchNorms, step)."""
    seen = {}
    step, forward = SeqBatchNorm.step, SeqBatchNorm.forward

    order = {id(bn): i for i, bn in enumerate(m for m in model.modules() if isinstance(m, SeqBatchNorm))}

    def record(bn, x, t):
        seen.setdefault((order[id(bn)], t), []).append((x.mean(0), x.var(0, unbiased=True)))

    def recording_step(self, x, t, mask=None):  # W_h h and the cell, one step at a time
        record(self, x, t)
        return step(self, x, t, mask)

    def recording_forward(self, x, mask=None, t0=0):  # W_x x, all steps at once
        for t in range(x.shape[0]):
            record(self, x[t], t0 + t)
        return forward(self, x, mask, t0)

    SeqBatchNorm.step, SeqBatchNorm.forward = recording_step, recording_forward
    try:
        model.eval()
        for bn in model.modules():
            if isinstance(bn, SeqBatchNorm):
                bn.train()
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        SeqBatchNorm.step, SeqBatchNorm.forward = step, forward
    return {k: (torch.stack([m for m, _ in v]).mean(0), torch.stack([s for _, s in v]).mean(0))
            for k, v in seen.items()}


def test_reestimation_over_the_whole_training_split(ptb_char_root, tmp_path):
    """Trainer.reestimate_statistics over every batch of a split: each step's statistics become
    the mean of that step's batch statistics over all of them (the fixture's whole training
    split, 22 batches); final_reestimate does it at the best weights before the test."""
    cfg = make_cfg(tiny(ptb_char_root, "model.norm=bn_recurrent", "data.limit_batches=null",
                        "data.batch_size=256"))
    data = instantiate(cfg.data)
    model = with_running_noise(instantiate(cfg.model, **data.dims))
    trainer = Trainer(model=model, data=data, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      scheduler=None, config=TrainerConfig(max_epochs=1, progress=False),
                      run_dir=tmp_path, device=torch.device("cpu"), info={"git_revision": "x"})
    n = data.num_batches("train")
    assert trainer.reestimate_statistics(n) == n == len(list(data.batches("train", 0))) > 20
    want = batch_statistics_by_hand(copy_of(model), data.batches("train", 0))
    got = {(i, t): (bn.running_mean[t], bn.running_var[t])
           for i, bn in enumerate(m for m in model.modules() if isinstance(m, SeqBatchNorm))
           for t in range(bn.max_steps)}
    for (i, t), (mean, var) in got.items():
        assert torch.allclose(mean, want[(i, t)][0], atol=1e-6)
        assert torch.allclose(var, want[(i, t)][1], atol=1e-5)
    assert model.training  # modes restored


def test_final_reestimate_then_test(ptb_char_root, tmp_path):
    overrides = tiny(ptb_char_root, "model.norm=bn_recurrent", "trainer.max_epochs=1",
                     "trainer.stream_splits=[]", "trainer.eval_lengths=[]", "data.limit_batches=2")
    _, final, _ = train([*overrides, "trainer.final_reestimate=true"], tmp_path / "final")
    cfg = make_cfg(overrides)
    data = instantiate(cfg.data)
    assert final["reestimated"] == {"split": "train", "batches": data.num_batches("train")}
    model = instantiate(cfg.model, **data.dims)
    model.load_state_dict(checkpoint.load(tmp_path / "final" / "checkpoints" / "best.pt")["model"])
    stats = batch_statistics_by_hand(copy_of(model), data.batches("train", 0))
    bns = [m for m in model.modules() if isinstance(m, SeqBatchNorm)]
    for i, bn in enumerate(bns):
        for t in range(bn.max_steps):
            bn.running_mean[t], bn.running_var[t] = stats[(i, t)]
    model.eval()
    with torch.no_grad():
        outs = [model(b) for b in data.batches("test")]
    ce = sum(o.loss_sum.item() for o in outs) / sum(o.count for o in outs)
    assert final["test"]["ce"] == pytest.approx(ce, rel=1e-5)
    _, plain, _ = train([*overrides, "trainer.final_reestimate=false"], tmp_path / "plain")
    assert "reestimated" not in plain and abs(plain["test"]["ce"] - ce) > 1e-4


def copy_of(model):
    import copy

    return copy.deepcopy(model)


def with_running_noise(model):
    """Population statistics that a re-estimation must replace, not average with."""
    for bn in model.modules():
        if isinstance(bn, SeqBatchNorm):
            bn.running_mean.normal_()
            bn.running_var.uniform_(2.0, 3.0)
    return model


def test_stream_and_length_metrics_in_final_json(ptb_char_root, tmp_path):
    overrides = tiny(ptb_char_root, "model.norm=bn_recurrent", "trainer.max_epochs=1",
                     "trainer.stream_splits=[valid,test]", "trainer.stream_chunk=50",
                     "trainer.eval_lengths=[5,20]", "trainer.final_reestimate=false")
    _, final, _ = train(overrides, tmp_path)
    cfg = make_cfg(overrides)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, **data.dims)
    model.load_state_dict(checkpoint.load(tmp_path / "checkpoints" / "best.pt")["model"])
    for split in ("valid", "test"):  # the whole split as one stream, read whole here
        stream = data.stream(split)
        want = evaluate_stream(model, stream, chunk=stream.numel())
        assert final[f"{split}_bpc_stream"] == pytest.approx(want["bpc"], rel=1e-6)
    by_length = final["test_bpc_by_length"]
    assert set(by_length) == {"5", "20", "whole"} and by_length["whole"] == final["test_bpc_stream"]
    assert by_length["20"] == pytest.approx(
        evaluate_by_length(model, data.stream("test"), 20)["bpc"], rel=1e-6)
    assert final["test_ce_by_length"]["5"] == pytest.approx(by_length["5"] * 0.6931471805599453, rel=1e-9)


def test_word_lm_streams_too(ptb_root, tmp_path):
    _, final, _ = train(["experiment=ptb_small", f"data.root={ptb_root}", "model.hidden_size=8",
                         "model.norm=bn_input", "data.limit_batches=2", "data.bptt=5",
                         "data.batch_size=4", "trainer.max_epochs=1", "quiet=true", "device=cpu",
                         "trainer.stream_splits=[test]", "trainer.stream_chunk=64"], tmp_path)
    assert final["test_ppl_stream"] > 1 and "test_ppl_batch_mean_stream" not in final


def test_cooijmans_code_protocol_composes_and_trains(ptb_char_root, tmp_path):
    """protocol=cooijmans_code end to end at a tiny size: 99-step-style disjoint examples with a
    crop, the official encoding, learned initial states, selection on batch-statistics error,
    re-estimation and the stream metrics."""
    for norm in ("bn_recurrent", "none"):
        _, final, rows = train(["experiment=cooijmans_char_ptb", "protocol=cooijmans_code",
                                f"data.root={ptb_char_root}", f"model.norm={norm}",
                                "model.hidden_size=8", "data.limit_batches=2", "data.batch_size=8",
                                "data.eval_batch_size=4", "data.seq_len=12", "trainer.max_epochs=1", "quiet=true",
                                "device=cpu", "trainer.stream_chunk=500", "trainer.eval_lengths=[6]"],
                               tmp_path / norm)
        assert final["status"] == "completed" and final["protocol"] == "cooijmans_code"
        assert final["selection"] == ("valid_batchstat_err" if norm != "none" else "valid_err")
        assert set(final["test_bpc_by_length"]) == {"6", "whole"}
        assert final["valid_bpc_stream"] > 0 and final["test_bpc_stream"] > 0
        assert ("reestimated" in final) == (norm != "none")
