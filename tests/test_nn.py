"""NormLSTM / NormRNN: every variant against nn.LSTM or a brute-force computation (tests/brute.py)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnrnn.nn import VARIANTS, NormLSTM, NormRNN, SeqBatchNorm, update_population_statistics
from bnrnn.nn.base import reverse_padded
from tests import brute

NORMS = list(VARIANTS)
# the variants with a batch norm in some slot, as the layer builds them
BN_NORMS = [n for n in NORMS if any(isinstance(m, SeqBatchNorm) for m in NormLSTM(2, 2, norm=n).modules())]
f64 = torch.float64


def make(norm, I=5, H=4, L=1, bidirectional=False, dropout=0.0, **kw):
    kw.setdefault("backend", "reference")
    m = NormLSTM(I, H, L, bidirectional=bidirectional, dropout=dropout, norm=norm, **kw).to(f64)
    with torch.no_grad():  # non-trivial γ/β so that a dropped term shows
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
    return m


def lengths_and_mask(lengths, T):
    lengths = torch.tensor(lengths)
    return lengths, torch.arange(T)[:, None] < lengths[None]


# ----------------------------------------------------------------------------- nn.LSTM equality
@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_none_equals_nn_lstm_outputs_and_gradients(backend, bidirectional):
    lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=bidirectional).to(f64)
    ours = NormLSTM.from_lstm(lstm, backend=backend)
    x = torch.randn(7, 3, 5, dtype=f64)
    D = 2 if bidirectional else 1
    h0, c0 = torch.randn(2, 2 * D, 3, 6, dtype=f64)
    out_ref, (h_ref, c_ref) = lstm(x, (h0, c0))
    out, (h, c) = ours(x, (h0, c0))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)
    g = torch.randn_like(out)
    (out_ref * g).sum().backward()
    (out * g).sum().backward()
    D = ours.num_directions
    for i, layer in enumerate(ours.layers):
        sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
        torch.testing.assert_close(layer.weight_hh.grad, getattr(lstm, "weight_hh" + sfx).grad)
        torch.testing.assert_close(layer.weight_ih.grad, getattr(lstm, "weight_ih" + sfx).grad)
        torch.testing.assert_close(layer.bias.grad, getattr(lstm, "bias_ih" + sfx).grad)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_none_with_lengths_equals_packed_nn_lstm(backend):
    lstm = nn.LSTM(4, 5, num_layers=2, bidirectional=True).to(f64)
    ours = NormLSTM.from_lstm(lstm, backend=backend)
    T, lengths = 6, torch.tensor([6, 2, 4, 1])
    x = torch.randn(T, 4, 4, dtype=f64)
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_ref, (h_ref, c_ref) = lstm(packed)
    out_ref, _ = nn.utils.rnn.pad_packed_sequence(out_ref, total_length=T)
    out, (h, c) = ours(x, lengths=lengths)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


def test_nn_rnn_equality_for_norm_none():
    rnn = nn.RNN(3, 4, num_layers=2, nonlinearity="tanh").to(f64)
    for backend in ("native", "reference"):
        ours = NormRNN(3, 4, 2, backend=backend).to(f64)
        with torch.no_grad():
            for k, layer in enumerate(ours.layers):
                layer.weight_ih.copy_(getattr(rnn, f"weight_ih_l{k}"))
                layer.weight_hh.copy_(getattr(rnn, f"weight_hh_l{k}"))
                layer.bias.copy_(getattr(rnn, f"bias_ih_l{k}") + getattr(rnn, f"bias_hh_l{k}"))
        x = torch.randn(5, 2, 3, dtype=f64)
        out_ref, h_ref = rnn(x)
        out, h = ours(x)
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(h, h_ref)


# ----------------------------------------------------------------------------- each variant, brute force
@pytest.mark.parametrize("norm", NORMS)
def test_training_forward_matches_brute_force_with_padding(norm):
    """Frame-wise statistics over the real rows of each step; frozen state after each end."""
    m = make(norm)
    T = 6
    lengths, mask = lengths_and_mask([6, 3, 5, 6], T)
    x = torch.randn(T, 4, 5, dtype=f64)
    h0, c0 = torch.randn(2, 1, 4, 4, dtype=f64)
    out, (h, c) = m(x, (h0, c0), lengths=lengths)
    out_b, h_b, c_b = brute.lstm_layer(m.layers[0], x, h0[0], c0[0], mask)
    torch.testing.assert_close(out, out_b)
    torch.testing.assert_close(h[0], h_b)
    torch.testing.assert_close(c[0], c_b)


def test_sequence_wise_bn_uses_only_real_frames():
    m = make("bn_input", stats="sequence")
    T = 7
    lengths, mask = lengths_and_mask([7, 2, 5], T)
    x = torch.randn(T, 3, 5, dtype=f64)
    x[~mask] = 1e6  # padding that would wreck any statistic it entered
    out, _ = m(x, lengths=lengths)
    z = torch.zeros(3, 4, dtype=f64)
    out_b, _, _ = brute.lstm_layer(m.layers[0], x, z, z, mask)
    torch.testing.assert_close(out, out_b)
    # the population statistic folded in is that of the real frames (unbiased variance)
    bn = m.layers[0].norm_ih
    wx = (x @ m.layers[0].weight_ih.T)[mask]
    var, mean = torch.var_mean(wx, dim=0, unbiased=True)
    torch.testing.assert_close(bn.running_mean[0], 0.1 * mean)
    torch.testing.assert_close(bn.running_var[0], 0.9 + 0.1 * var)


def test_bn_recurrent_parameters_follow_cooijmans():
    m = NormLSTM(3, 5, norm="bn_recurrent")
    layer = m.layers[0]
    assert layer.norm_ih.bias is None and layer.norm_hh.bias is None  # β = 0 on both gate BNs
    assert layer.bias is not None and layer.norm_cell.bias is not None  # one LSTM bias, β_c
    for bn in (layer.norm_ih, layer.norm_hh, layer.norm_cell):
        assert torch.all(bn.weight == 0.1)
    assert torch.all(layer.bias[5:10] == 1.0)  # forget-gate bias 1 (official code)
    assert NormLSTM(3, 5, norm="bn_recurrent", gamma_init=0.3).layers[0].norm_hh.weight[0].item() == pytest.approx(0.3)
    bn_input = NormLSTM(3, 5, norm="bn_input").layers[0]
    assert bn_input.bias is None and bn_input.norm_ih.bias is not None  # β replaces b
    assert torch.all(bn_input.norm_ih.weight == 1.0)


def test_bn_recurrent_carries_the_unnormalized_cell():
    m = make("bn_recurrent")
    x = torch.randn(4, 3, 5, dtype=f64)
    _, (h, c) = m(x)
    _, h_b, c_b = brute.lstm_layer(m.layers[0], x, torch.zeros(3, 4, dtype=f64), torch.zeros(3, 4, dtype=f64))
    torch.testing.assert_close(c[0], c_b)
    bn_c = m.layers[0].norm_cell
    # c is not what h was computed from: BN(c) has zero batch mean per feature before γ, β
    assert not torch.allclose(c[0].mean(0), bn_c.bias.detach(), atol=1e-3)


def test_population_statistics_per_step_and_t_max_rule():
    T_max = 3
    m = make("bn_recurrent", max_steps=T_max, momentum=1.0)  # momentum 1: running = last batch
    x = torch.randn(5, 6, 5, dtype=f64)
    m.train()
    m(x)
    layer = m.layers[0]
    for bn in (layer.norm_ih, layer.norm_hh, layer.norm_cell):
        assert bn.running_mean.shape[0] == T_max and torch.all(bn.num_batches_tracked == 1)
    m.eval()
    xe = torch.randn(7, 2, 5, dtype=f64)  # longer than T_max: steps >= 3 use slot 2

    def pop(slot):
        bn = getattr(layer, "norm_" + slot)
        return lambda t: (bn.running_mean[min(t, T_max - 1)], bn.running_var[min(t, T_max - 1)])

    out, _ = m(xe)
    z = torch.zeros(2, 4, dtype=f64)
    out_b, _, _ = brute.lstm_layer(layer, xe, z, z, population={s: pop(s) for s in ("ih", "hh", "cell")})
    torch.testing.assert_close(out, out_b)


def test_frame_wise_population_statistic_is_each_steps_batch_statistic():
    bn = SeqBatchNorm(3, stats="frame", max_steps=4, momentum=1.0).double()
    x = torch.randn(6, 5, 3, dtype=f64)
    bn(x)
    var, mean = torch.var_mean(x, dim=1, unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean[:4])
    torch.testing.assert_close(bn.running_var, var[:4])


@pytest.mark.parametrize("norm", NORMS)
def test_eval_output_of_a_sequence_does_not_depend_on_the_batch(norm):
    m = make(norm)
    m.train()
    for _ in range(3):
        m(torch.randn(5, 8, 5, dtype=f64))
    m.eval()
    x = torch.randn(5, 4, 5, dtype=f64)
    full, _ = m(x)
    alone, _ = m(x[:, 1:2])
    torch.testing.assert_close(full[:, 1:2], alone)


def test_ln_has_no_batch_dependence_in_training_mode_either():
    m = make("ln")
    m.train()
    x = torch.randn(5, 4, 5, dtype=f64)
    full, _ = m(x)
    other, _ = m(torch.cat([x[:, :2], 10 * torch.randn(5, 3, 5, dtype=f64)], 1))
    torch.testing.assert_close(full[:, :2], other[:, :2])


@pytest.mark.parametrize("norm", BN_NORMS)
def test_training_output_does_depend_on_the_batch_for_bn(norm):
    m = make(norm)
    m.train()
    x = torch.randn(5, 4, 5, dtype=f64)
    full, _ = m(x)
    other, _ = m(torch.cat([x[:, :2], 10 * torch.randn(5, 2, 5, dtype=f64)], 1))
    assert not torch.allclose(full[:, :2], other[:, :2])


# ----------------------------------------------------------------------------- padding and lengths
# sequence-wise statistics apply to the input term, which only bn_input and bn_recurrent normalize
@pytest.mark.parametrize("norm, stats", [(n, "frame") for n in NORMS]
                         + [("bn_input", "sequence"), ("bn_recurrent", "sequence")])
def test_more_padding_changes_nothing(norm, stats):
    """Outputs, final states, gradients and population statistics are blind to padding."""
    T, extra = 6, 4
    lengths = torch.tensor([6, 3, 5])
    x = torch.randn(T, 3, 5, dtype=f64)
    x_long = torch.cat([x, 100 * torch.randn(extra, 3, 5, dtype=f64)])
    results = []
    for inp in (x, x_long):
        torch.manual_seed(0)
        m = make(norm, L=2, bidirectional=True, stats=stats)
        inp = inp.clone().requires_grad_()
        out, (h, c) = m(inp, lengths=lengths)
        (out[:T].square().sum() + h.sum() + c.sum()).backward()
        stats_ = [b.clone() for n, b in m.named_buffers() if "running" in n]
        grads = [p.grad.clone() for p in m.parameters()]
        results.append((out, h, c, inp.grad[:T], stats_, grads))
    (o1, h1, c1, g1, s1, p1), (o2, h2, c2, g2, s2, p2) = results
    torch.testing.assert_close(o2[:T], o1)
    assert torch.all(o2[T:] == 0)
    torch.testing.assert_close((h2, c2, g2), (h1, c1, g1))
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm", NORMS)
def test_padded_batch_equals_each_sequence_alone(norm):
    """Exact for none and ln in training, and for every variant in evaluation. Training-mode BN
    differs legitimately: a batch statistic is over the sequences of the batch (at step t, the
    ones still running), so a sequence's output depends on its batch mates."""
    m = make(norm, L=2, bidirectional=True)
    m.train()
    m(torch.randn(6, 5, 5, dtype=f64))
    if norm in BN_NORMS:
        m.eval()
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(6, 3, 5, dtype=f64)
    out, (h, c) = m(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        o_b, (h_b, c_b) = m(x[:n, b:b + 1])
        torch.testing.assert_close(out[:n, b:b + 1], o_b)
        torch.testing.assert_close(h[:, b:b + 1], h_b)
        torch.testing.assert_close(c[:, b:b + 1], c_b)


def test_reverse_direction_reads_only_the_real_frames():
    m = make("none", bidirectional=True)
    lengths, mask = lengths_and_mask([4, 2], 5)
    x = torch.randn(5, 2, 5, dtype=f64)
    out, _ = m(x, lengths=lengths)
    rev = m.layers[1]
    z = torch.zeros(1, 4, dtype=f64)
    for b, n in enumerate(lengths.tolist()):
        o, _, _ = brute.lstm_layer(rev, x[:n, b:b + 1].flip(0), z, z)
        torch.testing.assert_close(out[:n, b, 4:], o.flip(0)[:, 0])


def test_reverse_padded_is_an_involution_that_keeps_padding():
    x = torch.arange(12.0).view(4, 3, 1)
    lengths = torch.tensor([4, 1, 3])
    r = reverse_padded(x, lengths)
    assert r[:, 0, 0].tolist() == [9.0, 6.0, 3.0, 0.0]
    assert r[:, 1, 0].tolist() == [1.0, 4.0, 7.0, 10.0]  # length 1: unchanged
    assert r[:, 2, 0].tolist() == [8.0, 5.0, 2.0, 11.0]  # padding (t=3) stays in place
    torch.testing.assert_close(reverse_padded(r, lengths), x)


# ----------------------------------------------------------------------------- stacking, dropout
def test_dropout_acts_between_layers_only():
    torch.manual_seed(1)
    m = make("ln", L=2, dropout=0.5)
    m.train()
    x = torch.randn(4, 3, 5, dtype=f64)
    torch.manual_seed(7)
    out, _ = m(x)
    torch.manual_seed(7)  # by hand: layer 0, dropout with the same draw, layer 1
    z = torch.zeros(3, 4, dtype=f64)
    o0, _, _ = brute.lstm_layer(m.layers[0], x, z, z)
    o1, _, _ = brute.lstm_layer(m.layers[1], F.dropout(o0, 0.5, True), z, z)
    torch.testing.assert_close(out, o1)
    m.eval()
    assert not torch.allclose(m(x)[0], out)


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_float64(norm):
    torch.manual_seed(3)
    m = make(norm, I=3, H=2, L=2, bidirectional=True)
    x = torch.randn(3, 3, 3, dtype=f64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=f64, requires_grad=True)
    c0 = torch.randn(4, 3, 2, dtype=f64, requires_grad=True)
    lengths = torch.tensor([3, 2, 3])
    params = list(m.parameters())

    def f(x, h0, c0, *ps):
        out, (h, c) = m(x, (h0, c0), lengths=lengths)
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-5, fast_mode=True)


# ----------------------------------------------------------------------------- population re-estimation
def test_update_population_statistics_is_the_exact_average():
    m = make("bn_input", max_steps=10)
    batches = [torch.randn(4, 6, 5, dtype=f64) for _ in range(3)]
    n = update_population_statistics(m, batches, lambda model, b: model(b))
    assert n == 3
    bn = m.layers[0].norm_ih
    wx = torch.stack([b @ m.layers[0].weight_ih.T for b in batches])  # (3, T, B, 4H)
    var, mean = torch.var_mean(wx, dim=2, unbiased=True)
    torch.testing.assert_close(bn.running_mean[:4], mean.mean(0))
    torch.testing.assert_close(bn.running_var[:4], var.mean(0))
    assert bn.momentum == 0.1 and torch.all(bn.num_batches_tracked[:4] == 3)
    assert torch.all(bn.num_batches_tracked[4:] == 0)


def test_update_population_statistics_restores_modes_and_skips_dropout():
    m = NormLSTM(3, 4, 2, dropout=0.5, norm="bn_input").double()
    m.train()
    seen = []

    def fwd(model, b):
        seen.append(model.training)
        model(b)

    update_population_statistics(m, [torch.randn(2, 3, 3, dtype=f64)], fwd)
    assert seen == [False]  # the model (dropout) in eval mode, the BNs in training mode
    assert m.training and all(mod.training for mod in m.modules())


# ----------------------------------------------------------------------------- NormRNN
def test_norm_rnn_bn_sum_brute_force():
    torch.manual_seed(0)
    m = NormRNN(3, 4, norm="bn_sum", backend="reference").double()
    with torch.no_grad():
        m.layers[0].norm_sum.bias.uniform_(-0.5, 0.5)
    x = torch.randn(5, 6, 3, dtype=f64)
    out, h = m(x)
    layer = m.layers[0]
    assert layer.bias is None  # β of the BN replaces b
    hb, outs = torch.zeros(6, 4, dtype=f64), []
    for t in range(5):
        pre = x[t] @ layer.weight_ih.T + hb @ layer.weight_hh.T
        hb = torch.tanh(brute.bn_rows(pre, torch.ones(6, dtype=torch.bool), layer.norm_sum.weight,
                                      layer.norm_sum.bias, 1e-5))
        outs.append(hb)
    torch.testing.assert_close(out, torch.stack(outs))
    torch.testing.assert_close(h[0], hb)
    assert layer.norm_sum.running_mean.shape == (100, 4)  # one statistic per time step, shared γ/β


# ----------------------------------------------------------------------------- errors and init
def test_clear_errors():
    with pytest.raises(ValueError, match=r"NormLSTM: norm must be one of none, bn_input, bn_recurrent, ln, bn_sum; got 'bn'"):
        NormLSTM(3, 4, norm="bn")
    with pytest.raises(ValueError, match=r"NormRNN: norm must be one of none, bn_input, bn_sum; got 'ln'"):
        NormRNN(3, 4, norm="ln")
    with pytest.raises(ValueError, match=r"stats='sequence' applies to the input term only"):
        NormLSTM(3, 4, norm="bn_sum", stats="sequence")
    with pytest.raises(ValueError, match=r"backend='native'.*only for norm='none'"):
        NormLSTM(3, 4, norm="ln", backend="native")
    with pytest.raises(ValueError, match=r"init must be one of"):
        NormLSTM(3, 4, init="xavier")
    with pytest.raises(ValueError, match=r"expected input \(T, B, 3\)"):
        NormLSTM(3, 4)(torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match=r"lengths must be"):
        NormLSTM(3, 4)(torch.randn(2, 2, 3), lengths=torch.tensor([3, 1]))


def test_init_schemes():
    torch.manual_seed(0)
    u = NormLSTM(10, 20, init="uniform", init_range=0.05).layers[0]
    assert u.weight_hh.abs().max() <= 0.05 and u.bias.abs().max() <= 0.05 and u.bias.abs().max() > 0.04
    g = NormLSTM(10, 20, init="glorot").layers[0]
    bound = (6 / (10 + 20)) ** 0.5  # per gate: fan_in 10, fan_out 20
    assert g.weight_ih.abs().max() <= bound and g.weight_ih.abs().max() > 0.9 * bound
    assert torch.all(g.bias == 0)
    o = NormLSTM(10, 20, init="orthogonal").layers[0]
    block = o.weight_hh[20:40]
    torch.testing.assert_close(block @ block.T, torch.eye(20), atol=1e-5, rtol=0)
