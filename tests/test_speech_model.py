"""The framewise classifier: padding changes nothing (loss, errors, BN statistics, gradients),
input statistics travel in the state dict, the paper's initialisation, FCE/FER arithmetic."""
import copy

import pytest
import torch
from hydra.utils import instantiate

from bnrnn.data.speech.batching import IGNORE
from bnrnn.models.speech import FramewiseClassifier
from tests.helpers import make_cfg

F_DIM, C = 6, 5


def model(norm, **kw):
    torch.manual_seed(0)
    mean = torch.linspace(-1, 1, F_DIM).tolist()
    std = torch.linspace(0.5, 2, F_DIM).tolist()
    return FramewiseClassifier(F_DIM, C, hidden_size=7, num_layers=2, norm=norm,
                               feature_mean=mean, feature_std=std, **kw).double()


def batch(lengths, T=None, garbage=0.0):
    """Random utterances (same per seed), padded to T with ``garbage`` features and IGNORE labels."""
    g = torch.Generator().manual_seed(1)
    T = T or max(lengths)
    x = torch.full((T, len(lengths), F_DIM), garbage, dtype=torch.float64)
    y = torch.full((T, len(lengths)), IGNORE, dtype=torch.int64)
    for b, n in enumerate(lengths):
        x[:n, b] = torch.randn(n, F_DIM, generator=g, dtype=torch.float64) * 3 + 1
        y[:n, b] = torch.randint(0, C, (n,), generator=g)
    return x, torch.tensor(lengths), y


def bn_buffers(m):
    return {k: v.clone() for k, v in m.state_dict().items() if "running" in k}


CASES = [("none", {}), ("bn_input", {}), ("none", {"norm_options": {"backend": "native"}})]


@pytest.mark.parametrize("norm, kw", CASES, ids=["none-reference", "bn_input-sequence", "none-native"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_more_padding_changes_nothing(norm, kw, train):
    """Pad the same batch with 6 more frames of garbage: the loss, the error count, the frame
    count, the BN statistics after the step and every gradient stay the same."""
    if norm == "none" and not kw:
        kw = {"norm_options": {"backend": "reference"}}
    results = []
    for extra in (0, 6):
        m = model(norm, **kw).train(train)
        x, lengths, y = batch([9, 4, 7], T=9 + extra, garbage=50.0 if extra else 0.0)
        out = m((x, lengths, y))
        out.objective.backward()
        grads = {k: p.grad.clone() for k, p in m.named_parameters()}
        results.append((out, bn_buffers(m), grads))
    (a, bn_a, g_a), (b, bn_b, g_b) = results
    assert a.count == b.count == 20
    torch.testing.assert_close(a.loss_sum, b.loss_sum, rtol=1e-10, atol=1e-10)
    assert int(a.sums["errors"]) == int(b.sums["errors"])
    if norm == "bn_input" and train:
        assert bn_a and all(v.abs().sum() > 0 for k, v in bn_a.items() if "mean" in k)
    for k in bn_a:
        torch.testing.assert_close(bn_a[k], bn_b[k], rtol=1e-10, atol=1e-10, msg=k)
    for k in g_a:
        torch.testing.assert_close(g_a[k], g_b[k], rtol=1e-8, atol=1e-10, msg=k)


def test_sequence_statistics_are_over_real_frames_only():
    """The first layer's sequence-wise BN output over the real frames has mean β and variance
    γ²: its statistics are those of the real frames alone."""
    m = model("bn_input").train()
    x, lengths, y = batch([9, 4, 7], T=12, garbage=50.0)
    layer = m.rnn.layers[0]
    seen = {}
    layer.norm_ih.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out))
    m((x, lengths, y))
    mask = torch.arange(12)[:, None] < lengths[None]
    real = seen["out"][mask]  # (20, 4H): normalized real frames
    torch.testing.assert_close(real.mean(0), layer.norm_ih.bias.detach().expand_as(real.mean(0)),
                               atol=1e-10, rtol=0)  # γ x̂ + β has mean β over the frames it saw
    # and variance γ² = 1 (up to eps): the garbage at padded frames (x = 50) entered neither
    torch.testing.assert_close(real.var(0, unbiased=False), torch.ones(real.shape[1], dtype=real.dtype),
                               atol=1e-3, rtol=0)


def test_eval_batch_equals_each_utterance_alone():
    m = model("bn_input")
    m((batch([9, 4, 7])))  # one training step's statistics
    m.eval()
    x, lengths, y = batch([9, 4, 7], T=11, garbage=-7.0)
    whole = m((x, lengths, y))
    parts = [m((x[:n, b:b + 1], lengths[b:b + 1], y[:n, b:b + 1])) for b, n in enumerate([9, 4, 7])]
    torch.testing.assert_close(whole.loss_sum, sum(p.loss_sum for p in parts))
    assert int(whole.sums["errors"]) == sum(int(p.sums["errors"]) for p in parts)


def test_input_statistics_travel_with_the_state_dict():
    m = model("bn_input")
    state = copy.deepcopy(m.state_dict())
    assert {"feature_mean", "feature_std"} <= set(state)
    fresh = FramewiseClassifier(F_DIM, C, hidden_size=7, num_layers=2, norm="bn_input").double()
    assert fresh.feature_std.eq(1).all()  # no statistics given: identity
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.feature_std, m.feature_std)
    x, lengths, y = batch([5, 3])
    m.eval(), fresh.eval()
    torch.testing.assert_close(fresh((x, lengths, y)).loss_sum, m((x, lengths, y)).loss_sum)


def test_paper_initialisation():
    m = model("none", norm_options={"backend": "reference"})
    assert torch.count_nonzero(m.output.bias) == 0
    for layer in m.rnn.layers:
        assert torch.count_nonzero(layer.bias) == 0
        H = layer.hidden_size
        bound = (6 / (H + layer.input_size)) ** 0.5  # Glorot-uniform per gate block
        assert layer.weight_ih.abs().max() <= bound and layer.weight_ih.abs().max() > 0.8 * bound


def test_metrics_are_frame_weighted():
    assert FramewiseClassifier.metrics({"loss_sum": 30.0, "count": 20, "errors": 5.0}) == {
        "fce": 1.5, "fer": 0.25}


def test_bad_statistics_are_a_clear_error():
    with pytest.raises(ValueError, match="6 values"):
        FramewiseClassifier(F_DIM, C, feature_mean=[0.0] * 5, feature_std=[1.0] * 5)
    with pytest.raises(ValueError, match="positive"):
        FramewiseClassifier(F_DIM, C, feature_mean=[0.0] * 6, feature_std=[0.0] * 6)


@pytest.mark.parametrize("experiment", ["speech_librispeech", "speech_synthetic"])
def test_experiment_model_configs(experiment):
    """The paper's optimiser in both; the model config instantiates with the data's dims."""
    cfg = make_cfg([f"experiment={experiment}"])
    assert (cfg.optim.momentum, cfg.data.batch_size, cfg.data.max_frames) == (0.9, 24, 1300)
    assert cfg.optim.lr == (1e-4 if experiment == "speech_librispeech" else 1e-3)  # see the config
    assert cfg.model.stats == "sequence" and cfg.trainer.eval_splits == ["dev"]
    if experiment == "speech_librispeech":
        assert (cfg.model.num_layers, cfg.model.hidden_size) == (5, 250)
    for norm in ("none", "bn_input"):
        cfg.model.norm = norm
        m = instantiate(cfg.model, feature_dim=123, num_classes=41, feature_mean=[0.0] * 123,
                        feature_std=[1.0] * 123)
        assert m.rnn.norm == norm and m.rnn.bidirectional and m.rnn.num_layers == cfg.model.num_layers
        assert m.output.out_features == 41 and m.feature_mean.shape == (123,)
