"""Whole-split evaluation (bnrnn.evaluation): a stream read in chunks equals the same stream read
whole, for every variant of every LM; the by-length evaluation equals a brute-force loop over
examples; contiguous streams start from fresh states."""
import math

import pytest
import torch

from bnrnn.evaluation import evaluate_by_length, evaluate_stream, stream_columns
from bnrnn.models.char import CharLSTM, CharRNN
from bnrnn.models.lm import WordLM
from bnrnn.nn import VARIANTS, SeqBatchNorm

V, MAX_STEPS, N = 7, 4, 23  # the stream is longer than T_max: steps past it use the last slot


def with_population_statistics(model):
    """Distinct, random per-step population statistics in every BN, so a wrong step index shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, SeqBatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)
    return model


def models():
    opts = {"max_steps": MAX_STEPS, "backend": "reference"}
    for norm in VARIANTS:
        yield f"char_lstm-{norm}", lambda n=norm: CharLSTM(V, 5, 2, norm=n, norm_options=opts,
                                                           learn_initial_state=True)
    for norm in ("none", "bn_sum"):
        yield f"char_rnn-{norm}", lambda n=norm: CharRNN(V, 3, 4, 2, norm=n, norm_options=opts)
    for norm in ("bn_input", "bn_recurrent"):
        yield f"word_lm-{norm}", lambda n=norm: WordLM(V, 4, 2, norm=n, norm_options=opts)


MODELS = dict(models())


def build(name):
    torch.manual_seed(1)
    model = with_population_statistics(MODELS[name]().double())
    if getattr(model, "h0", None) is not None:
        with torch.no_grad():  # a learned initial state that is not zero
            model.h0.normal_()
            model.c0.normal_()
    return model


class IgnoresT0(torch.nn.Module):
    """Every chunk scored as if it started at step 0: what chunking without t0 would compute."""

    def __init__(self, model):
        super().__init__()
        self.model, self.metrics = model, model.metrics

    def score(self, batch, state=None, t0=0):
        return self.model.score(batch, state, 0)


@pytest.mark.parametrize("name", list(MODELS))
def test_stream_in_chunks_equals_the_stream_whole(name):
    model = build(name)
    stream = torch.randint(V, (N,))
    whole = evaluate_stream(model, stream, chunk=N)  # one forward over all 22 steps
    for chunk in (1, 3, 5):
        chunked = evaluate_stream(model, stream, chunk=chunk)
        assert chunked.keys() == whole.keys()
        for k in whole:
            assert chunked[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-12), (chunk, k)
    assert model.training  # the mode is restored
    if any(isinstance(m, SeqBatchNorm) for m in model.modules()):  # the test can fail
        wrong = evaluate_stream(IgnoresT0(model), stream, chunk=3)
        assert abs(wrong["loss" if "loss" in wrong else "ce"] - whole.get("loss", whole.get("ce"))) > 1e-6


@pytest.mark.parametrize("name", ["char_lstm-bn_recurrent", "char_rnn-bn_sum"])
def test_by_length_is_fresh_examples_of_that_length(name):
    model = build(name).eval()
    stream = torch.randint(V, (N,))
    L = 6  # 23 // 6 = 3 examples of 6 symbols, 5 predictions each; 5 symbols of tail dropped
    got = evaluate_by_length(model, stream, L, batch_size=2, chunk=2)
    nll = count = 0.0
    for i in range(N // L):
        example = stream[i * L:(i + 1) * L]
        out = model((example[:-1, None], example[1:, None]))  # a fresh state, steps 0..4
        nll, count = nll + out.loss_sum.item(), count + out.count
    assert count == 15
    assert got["ce"] == pytest.approx(nll / count, rel=1e-12)
    assert got["bpc"] == pytest.approx(nll / count / math.log(2), rel=1e-12)


def test_contiguous_streams_each_start_fresh():
    model = build("char_lstm-bn_recurrent")
    stream = torch.randint(V, (N,))
    inputs, targets = stream_columns(stream, 2)  # T = 11 predictions each, stream[22] dropped
    assert inputs.shape == (11, 2) and torch.equal(inputs[:, 1], stream[11:22])
    assert torch.equal(targets[:, 0], stream[1:12])
    both = evaluate_stream(model, stream, streams=2, chunk=3)
    halves = [evaluate_stream(model, stream[j * 11: j * 11 + 12], chunk=4) for j in (0, 1)]
    assert both["ce"] == pytest.approx(sum(h["ce"] for h in halves) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="streams must be >= 1"):
        stream_columns(stream, 0)
