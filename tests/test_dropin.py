"""NormLSTM / NormRNN as drop-ins for nn.LSTM / nn.RNN.

With ``norm='none'`` and nn.LSTM's arguments, a layer given nn.LSTM's weights computes nn.LSTM's
outputs, final states and gradients (w.r.t. the input, the initial state and every weight) to
1e-12 in float64, on every backend (native ATen, the reference loop, the fused Triton kernels
under the interpreter), for every input form nn.LSTM takes: a padded tensor, batch_first, a
PackedSequence (sorted or not; the output packed the same way) and one unbatched sequence. The
weights are copied by hand here (``copy_weights``), independently of the layer's own converters,
which ``test_state_dict_*`` check against that copy. The whole matrix is in the slow tier; the
fast tier runs a subset that still touches every argument, form and backend.
"""
import copy
import itertools
import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from bnrnn.nn import VARIANTS, NormLSTM, NormRNN
from tests import brute

f64 = torch.float64
I, H, T, B = 3, 4, 4, 3
LENGTHS = [2, 4, 3]  # unsorted on purpose
BACKENDS = ("native", "reference", "fused")
FORMS = ("padded", "packed", "packed_sorted", "unbatched")
EXACT = dict(rtol=0, atol=1e-12)


def copy_weights(ours, theirs):
    """theirs' (nn.LSTM / nn.RNN) weights into ours by name, b = b_ih + b_hh."""
    D = 2 if theirs.bidirectional else 1
    with torch.no_grad():
        for i, layer in enumerate(ours.layers):
            sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
            layer.weight_ih.copy_(getattr(theirs, "weight_ih" + sfx))
            layer.weight_hh.copy_(getattr(theirs, "weight_hh" + sfx))
            if theirs.bias:
                layer.bias.copy_(getattr(theirs, "bias_ih" + sfx) + getattr(theirs, "bias_hh" + sfx))
            if getattr(theirs, "proj_size", 0):
                layer.weight_hr.copy_(getattr(theirs, "weight_hr" + sfx))


def twins(kind, args, backend, dtype=f64):
    """(nn.LSTM or nn.RNN, our layer with its weights), both built from ``args``."""
    torch.manual_seed(0)
    theirs = (nn.LSTM if kind == "lstm" else nn.RNN)(I, H, **args).to(dtype).eval()
    ours = (NormLSTM if kind == "lstm" else NormRNN)(I, H, **args, backend=backend).to(dtype).eval()
    copy_weights(ours, theirs)
    return theirs, ours


def inputs(kind, args, form, dtype=f64):
    """(input as nn.LSTM takes it, its leaf tensor, initial states (leaves))."""
    L, D = args.get("num_layers", 1), 2 if args.get("bidirectional") else 1
    torch.manual_seed(1)
    batch = () if form == "unbatched" else (B,)
    sizes = (args.get("proj_size") or H, H) if kind == "lstm" else (H,)
    states = [torch.randn(L * D, *batch, size, dtype=dtype, requires_grad=True) for size in sizes]
    if form == "unbatched":
        x = torch.randn(T, I, dtype=dtype, requires_grad=True)
        return x, x, states
    bf = args.get("batch_first", False)
    x = torch.randn(*((B, T) if bf else (T, B)), I, dtype=dtype, requires_grad=True)
    if form == "padded":
        return x, x, states
    lengths = torch.tensor(sorted(LENGTHS, reverse=True) if form == "packed_sorted" else LENGTHS)
    return pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=form == "packed_sorted"), x, states


def run(module, kind, x, states):
    """Outputs (the output tensor, or a packed output's data) and final states, and the
    gradient of a fixed weighted sum of them w.r.t. everything."""
    out, last = module(x, tuple(states) if kind == "lstm" else states[0])
    last = last if kind == "lstm" else (last,)
    data = out.data if isinstance(out, PackedSequence) else out
    g = torch.linspace(-1, 1, data.numel(), dtype=data.dtype).view_as(data)
    ((data * g).sum() + sum((k + 2) * s.square().sum() for k, s in enumerate(last))).backward()
    return out, last


def grads(tensors):
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


def check_conformance(kind, args, form, backend, dtype=f64):
    theirs, ours = twins(kind, args, backend, dtype)
    x, leaf, states = inputs(kind, args, form, dtype)  # the same values twice (seeded), each
    out_ref, last_ref = run(theirs, kind, x, states)   # with a graph of its own
    g_ref = grads([leaf, *states])
    x, leaf, states = inputs(kind, args, form, dtype)
    out, last = run(ours, kind, x, states)
    g = grads([leaf, *states])
    tol = EXACT if dtype == f64 else {}
    assert type(out) is type(out_ref)
    if isinstance(out, PackedSequence):
        for a, b in zip(out[1:], out_ref[1:]):  # batch sizes, sorted and unsorted indices
            assert (a is None and b is None) or torch.equal(a, b)
        out, out_ref = out.data, out_ref.data
    torch.testing.assert_close(out, out_ref, **tol)
    for a, b in zip((*last, *g), (*last_ref, *g_ref)):
        torch.testing.assert_close(a, b, **tol)
    D = 2 if args.get("bidirectional") else 1
    for i, layer in enumerate(ours.layers):
        sfx = f"_l{i // D}" + ("_reverse" if i % D else "")
        torch.testing.assert_close(layer.weight_ih.grad, getattr(theirs, "weight_ih" + sfx).grad, **tol)
        torch.testing.assert_close(layer.weight_hh.grad, getattr(theirs, "weight_hh" + sfx).grad, **tol)
        if args.get("proj_size"):
            torch.testing.assert_close(layer.weight_hr.grad, getattr(theirs, "weight_hr" + sfx).grad, **tol)
        if args.get("bias", True):  # d/db = d/db_ih = d/db_hh
            torch.testing.assert_close(layer.bias.grad, getattr(theirs, "bias_ih" + sfx).grad, **tol)
            torch.testing.assert_close(layer.bias.grad, getattr(theirs, "bias_hh" + sfx).grad, **tol)
        else:
            assert layer.bias is None


def all_args(kind, backend):
    """Every combination of nn.LSTM's (nn.RNN's) arguments our layers take on ``backend``
    (dropout: evaluation; proj_size: not on the fused kernels, which refuse it)."""
    names = ("num_layers", "bias", "batch_first", "bidirectional", "proj_size")
    projections = (0, 2) if kind == "lstm" and backend != "fused" else (0,)
    for values in itertools.product((1, 2), (True, False), (False, True), (False, True), projections):
        args = dict(zip(names, values))
        if args["num_layers"] > 1:
            args["dropout"] = 0.3  # between layers; the identity in evaluation
        if not args["proj_size"]:
            del args["proj_size"]
        yield args


def arg_id(args):
    return "-".join(f"{k}={v}" for k, v in args.items())


# a subset touching every argument, every form and every backend
FAST = [
    ("lstm", dict(num_layers=2, bidirectional=True, dropout=0.3), "packed", "native"),
    ("lstm", dict(num_layers=2, bidirectional=True), "packed", "reference"),
    ("lstm", dict(bidirectional=True, batch_first=True), "packed", "fused"),
    ("lstm", dict(bias=False, batch_first=True), "padded", "native"),
    ("lstm", dict(bias=False, batch_first=True, num_layers=2), "padded", "reference"),
    ("lstm", dict(bias=False), "packed_sorted", "fused"),
    ("lstm", dict(num_layers=2), "unbatched", "native"),
    ("lstm", dict(bidirectional=True), "unbatched", "reference"),
    ("lstm", dict(), "unbatched", "fused"),
    ("lstm", dict(proj_size=2, num_layers=2, bidirectional=True), "packed", "native"),
    ("lstm", dict(proj_size=2, num_layers=2, bias=False, batch_first=True), "padded", "reference"),
    ("lstm", dict(proj_size=3), "unbatched", "native"),
    ("rnn", dict(num_layers=2, bidirectional=True, batch_first=True), "packed", "native"),
    ("rnn", dict(bias=False, bidirectional=True), "packed", "reference"),
    ("rnn", dict(batch_first=True), "unbatched", "fused"),
]


@pytest.mark.parametrize("kind, args, form, backend", FAST,
                         ids=[f"{k}-{arg_id(a)}-{f}-{b}" for k, a, f, b in FAST])
def test_conformance_fast(kind, args, form, backend):
    check_conformance(kind, args, form, backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_conformance_matrix(kind, form, backend):
    for args in all_args(kind, backend):
        check_conformance(kind, args, form, backend)


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_conformance_float32(backend):
    """float32 within float32's rounding (the fused kernels' fp32 runs on GPU, tests/test_fused.py)."""
    check_conformance("lstm", dict(num_layers=2, bidirectional=True, batch_first=True), "packed",
                      backend, torch.float32)


def test_dropout_in_training_is_nn_lstms():
    """Native, dropout between layers in training is ATen's own, so the same seed drops the
    same units as nn.LSTM."""
    theirs, ours = twins("lstm", dict(num_layers=3, dropout=0.5), "native")
    theirs.train(), ours.train()
    x = torch.randn(T, B, I, dtype=f64)
    torch.manual_seed(5)
    ref = theirs(x)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(ours(x)[0], ref, **EXACT)


def test_positional_arguments_are_nn_lstms():
    """(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
    device, dtype) for NormLSTM, nn.RNN's order (with nonlinearity) for NormRNN."""
    m = NormLSTM(3, 4, 2, False, True, 0.25, True, 0, "cpu", f64)
    assert (m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional, m.proj_size) == (2, False, True, 0.25, True, 0)
    assert all(p.dtype == f64 for p in m.parameters()) and m.layers[0].bias is None
    r = NormRNN(3, 4, 2, "tanh", False, True, 0.25, True, "cpu", f64)
    assert (r.num_layers, r.bias, r.batch_first, r.dropout, r.bidirectional) == (2, False, True, 0.25, True)
    assert all(p.dtype == f64 for p in r.parameters())
    assert NormLSTM(32, 64, num_layers=2, norm="bn_recurrent").norm == "bn_recurrent"  # the README's call
    with pytest.raises(TypeError):
        NormLSTM(3, 4, 1, True, False, 0.0, False, 0, None, None, "bn_input")  # norm is keyword-only


# ----------------------------------------------------------------------------- the normalized variants
def variant(norm, backend="reference", **kw):
    torch.manual_seed(0)
    m = NormLSTM(I, H, 2, norm=norm, backend=backend, **kw).double()
    with torch.no_grad():  # non-trivial γ/β and statistics so that any mix-up shows
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.rand_like(p))
        for name, b in m.named_buffers():
            if "running_mean" in name:
                b.normal_()
    return m


@pytest.mark.parametrize("norm", [n for n in VARIANTS if n != "none"])
def test_input_forms_of_every_variant(norm):
    """batch_first is the transpose, a PackedSequence is ``lengths`` (training: batch
    statistics over the real frames), an unbatched sequence is a batch of one (evaluation:
    a batch norm cannot train on one sequence)."""
    ref, bf = variant(norm), variant(norm, batch_first=True)
    x, lengths = torch.randn(T, B, I, dtype=f64), torch.tensor(LENGTHS)
    out, (h, c) = ref(x, lengths=lengths)
    out_bf, (h_bf, c_bf) = bf(x.transpose(0, 1), lengths=lengths)
    torch.testing.assert_close(out_bf, out.transpose(0, 1), **EXACT)
    torch.testing.assert_close(h_bf, h, **EXACT)
    packed, (h_p, c_p) = ref(pack_padded_sequence(x, lengths, enforce_sorted=False))
    torch.testing.assert_close(pad_packed_sequence(packed, total_length=T)[0], out, **EXACT)
    torch.testing.assert_close(h_p, h, **EXACT)
    torch.testing.assert_close(c_p, c, **EXACT)
    ref.eval()
    h0 = torch.randn(2, H, dtype=f64), torch.randn(2, H, dtype=f64)
    one, (h1, c1) = ref(x[:, 0], h0)
    batch, (hb, cb) = ref(x[:, :1], tuple(s[:, None] for s in h0))
    assert one.shape == (T, H) and h1.shape == (2, H)
    torch.testing.assert_close(one, batch[:, 0], **EXACT)
    torch.testing.assert_close(h1, hb[:, 0], **EXACT)
    torch.testing.assert_close(c1, cb[:, 0], **EXACT)


@pytest.mark.parametrize("norm", ["bn_input", "bn_sum"])
def test_bias_false_removes_the_shift_replacing_b(norm):
    """No additive gate term at all: neither b nor the β of the batch norm replacing it
    (N_cell's β_c, not a gate's, stays)."""
    layer = NormLSTM(I, H, bias=False, norm=norm).layers[0]
    assert layer.bias is None and layer.gate_shift() is None
    assert NormLSTM(I, H, bias=False, norm="bn_recurrent").layers[0].norm_cell.bias is not None


def test_refusals():
    with pytest.raises(ValueError, match="nonlinearity='relu' is not supported"):
        NormRNN(I, H, nonlinearity="relu")
    with pytest.raises(ValueError, match="batch_first=True with population=2"):
        NormLSTM(I, H, batch_first=True, population=2)
    with pytest.raises(ValueError, match="forget_bias=1.0 with bias=False"):
        NormLSTM(I, H, bias=False, forget_bias=1.0)
    m = NormLSTM(I, H, backend="reference").double()
    x = torch.randn(T, B, I, dtype=f64)
    with pytest.raises(ValueError, match="lengths given with a PackedSequence"):
        m(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False), lengths=torch.tensor(LENGTHS))
    with pytest.raises(ValueError, match="lengths given with an unbatched"):
        m(x[:, 0], lengths=torch.tensor([2]))
    with pytest.raises(RuntimeError, match="For unbatched 2-D input, hx and cx should also be 2-D but got 3-D"):
        m(x[:, 0], (torch.zeros(1, 1, H, dtype=f64),) * 2)
    pop = NormLSTM(I, H, population=2, backend="reference").double()
    with pytest.raises(ValueError, match="not a PackedSequence"):
        pop(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))


# ----------------------------------------------------------------------------- state dicts
TWIN_ARGS = [(kind, args) for kind in ("lstm", "rnn")
             for args in (dict(num_layers=2, bidirectional=True), dict(bias=False, batch_first=True))]
TWIN_ARGS.append(("lstm", dict(num_layers=2, bidirectional=True, proj_size=2)))


@pytest.mark.parametrize("kind, args", TWIN_ARGS, ids=[f"{k}-{arg_id(a)}" for k, a in TWIN_ARGS])
def test_state_dict_of_torch_loads_and_converts_back(kind, args):
    """nn.LSTM's state dict loads as it is (b_ih + b_hh into b); to_torch() gives the nn.LSTM
    back (b_ih = b, b_hh = 0), from_torch() ours with nn.LSTM's configuration."""
    theirs, by_hand = twins(kind, args, "reference")
    cls = NormLSTM if kind == "lstm" else NormRNN
    loaded = cls(I, H, **args, backend="reference").double()
    loaded.load_state_dict(theirs.state_dict())
    converted = cls.from_lstm(theirs) if kind == "lstm" else cls.from_rnn(theirs)
    for other in (loaded, converted):
        assert other.state_dict().keys() == by_hand.state_dict().keys()
        for key, value in by_hand.state_dict().items():
            torch.testing.assert_close(other.state_dict()[key], value, **EXACT)
    assert converted.configuration() == {**by_hand.configuration(), "backend": "auto"}
    back = loaded.to_lstm() if kind == "lstm" else loaded.to_rnn()
    assert type(back) is type(theirs) and back.state_dict().keys() == theirs.state_dict().keys()
    if args.get("bias", True):
        assert torch.equal(back.bias_hh_l0, torch.zeros_like(back.bias_hh_l0))
    x = torch.randn(T, B, I, dtype=f64)
    torch.testing.assert_close(back(x)[0], theirs(x)[0], **EXACT)


def test_from_lstm_puts_the_bias_into_the_shift_replacing_it():
    lstm = nn.LSTM(I, H).double()
    for norm, shift in (("bn_input", "norm_ih"), ("bn_sum", "norm_sum"), ("ln", None)):
        layer = NormLSTM.from_lstm(lstm, norm=norm).layers[0]
        got = layer.bias if shift is None else getattr(layer, shift).bias
        torch.testing.assert_close(got, lstm.bias_ih_l0 + lstm.bias_hh_l0, **EXACT)
        torch.testing.assert_close(layer.weight_hh, lstm.weight_hh_l0, **EXACT)


@pytest.mark.parametrize("norm", list(VARIANTS))
def test_state_dict_round_trip_of_every_variant(norm):
    """Parameters and population statistics survive state_dict -> load_state_dict."""
    m = variant(norm)
    fresh = NormLSTM(I, H, 2, norm=norm, backend="reference").double()
    fresh.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I, dtype=f64)
    for mode in (False, True):
        m.train(mode), fresh.train(mode)
        torch.testing.assert_close(fresh(x)[0], m(x)[0], **EXACT)


def test_state_dict_refusals():
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*bias_ih_l0"):
        NormLSTM(I, H, bias=False).load_state_dict(nn.LSTM(I, H).state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*layers.0.bias"):
        NormLSTM(I, H).load_state_dict(nn.LSTM(I, H, bias=False).state_dict())
    with pytest.raises(ValueError, match="only a norm='none' layer with population=None converts"):
        NormLSTM(I, H, norm="bn_input").to_lstm()
    with pytest.raises(TypeError, match="expected an LSTM; got RNN"):
        NormLSTM.from_torch(nn.RNN(I, H))


# ----------------------------------------------------------------------------- a script, unchanged
def nn_lstm_script(LSTM, weights):
    """What a script written for torch.nn.LSTM does (positional arguments, batch_first, a packed
    batch, a backward pass, unbatched decoding); only the class it is given changes."""
    lstm = LSTM(I, H, 2, True, True, 0.0, True, dtype=f64)
    lstm.load_state_dict(weights)
    torch.manual_seed(3)
    x = torch.randn(B, T, I, dtype=f64, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    out, lengths = pad_packed_sequence(out, batch_first=True)
    loss = out.square().sum() + h.sum() + c.square().sum()
    loss.backward()
    lstm.eval()
    with torch.no_grad():
        decoded, state = lstm(torch.randn(T, I, dtype=f64))
        decoded, _ = lstm(torch.randn(1, I, dtype=f64), state)
    grads = {k: p.grad for k, p in lstm.named_parameters()}
    return loss.detach(), x.grad, decoded, lengths, grads


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_nn_lstm_script_runs_unchanged(backend):
    weights = nn.LSTM(I, H, 2, True, True, 0.0, True, dtype=f64).state_dict()
    ref = nn_lstm_script(nn.LSTM, weights)
    got = nn_lstm_script(lambda *a, **kw: NormLSTM(*a, **kw, backend=backend), weights)
    for a, b in zip(got[:4], ref[:4]):
        torch.testing.assert_close(a, b, **EXACT)
    for key, grad in got[4].items():  # layers.{i}.bias: the gradient of b_ih and of b_hh
        i, name = int(key.split(".")[1]), key.split(".")[2]
        sfx = f"_l{i // 2}" + ("_reverse" if i % 2 else "")
        torch.testing.assert_close(grad, ref[4][("bias_ih" if name == "bias" else name) + sfx], **EXACT)


# ----------------------------------------------------------------------------- one step at a time
STEP_CASES = ([("lstm", n, "reference", mode) for n in VARIANTS for mode in ("train", "eval")]
              + [("rnn", n, "reference", mode) for n in NormRNN.norms_allowed for mode in ("train", "eval")]
              + [("lstm", "bn_recurrent", "fused", "train")]
              + [pytest.param(*c, marks=pytest.mark.slow) for c in (
                  ("lstm", "bn_recurrent", "fused", "eval"), ("rnn", "bn_sum", "fused", "train"),
                  ("rnn", "bn_sum", "fused", "eval"), ("lstm", "ln", "fused", "train"))])


@pytest.mark.parametrize("kind, norm, backend, mode", STEP_CASES)
def test_steps_compute_the_sequence_call(kind, norm, backend, mode):
    """step(x_t, state, t) for t = 0 .. T-1 gives the sequence call's outputs, final states,
    gradients and (training) updated population statistics, past T_max too."""
    cls = NormLSTM if kind == "lstm" else NormRNN
    torch.manual_seed(0)
    seq = cls(I, H, 2, norm=norm, backend=backend, max_steps=T - 1).double().train(mode == "train")
    with torch.no_grad():
        for name, b in seq.named_buffers():
            if "running_mean" in name:
                b.normal_()
    steps = copy.deepcopy(seq)
    x = torch.randn(T, B, I, dtype=f64)
    h0 = torch.randn(2, B, H, dtype=f64)
    hx = (h0, torch.randn(2, B, H, dtype=f64)) if kind == "lstm" else h0
    out, last = seq(x, hx)
    outs, state = [], hx
    for t in range(T):
        y, state = steps.step(x[t], state, t)
        assert y.shape == (B, H)
        outs.append(y)
    got = (torch.stack(outs), *(state if kind == "lstm" else (state,)))
    want = (out, *(last if kind == "lstm" else (last,)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **EXACT)
    sum(s.square().sum() for s in got).backward()
    sum(s.square().sum() for s in want).backward()
    for (name, p), q in zip(steps.named_parameters(), seq.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **EXACT, msg=name)
    for (name, b), c in zip(steps.named_buffers(), seq.buffers()):
        torch.testing.assert_close(b, c, **EXACT, msg=name)


def test_step_forms_and_refusals():
    m = NormLSTM(I, H, batch_first=True, backend="reference").double().eval()
    x = torch.randn(B, T, I, dtype=f64)
    out, _ = m(x)
    y, state = m.step(x[:, 0])  # batch_first does not apply to one step
    torch.testing.assert_close(y, out[:, 0], **EXACT)
    y1, (h1, c1) = m.step(x[0, 1], tuple(s[:, 0] for s in state), t=1)  # one unbatched sequence
    assert y1.shape == (H,) and h1.shape == (1, H)
    torch.testing.assert_close(y1, out[0, 1], **EXACT)
    with pytest.raises(ValueError, match="bidirectional layer's reverse direction"):
        NormLSTM(I, H, bidirectional=True).step(x[:, 0].float())


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("norm", list(VARIANTS))
def test_forget_bias_sets_the_forget_block_of_every_variants_shift(norm):
    """forget_bias=v sets the f block of the gate shift (b, or the β replacing it) and nothing
    else: the same seed without it draws every other value the same."""
    torch.manual_seed(0)
    plain = NormLSTM(I, H, norm=norm, forget_bias=0.0).layers[0]
    torch.manual_seed(0)
    layer = NormLSTM(I, H, norm=norm, forget_bias=1.5).layers[0]
    shift, base = layer.gate_shift(), plain.gate_shift()
    assert torch.all(shift[H:2 * H] == 1.5)
    keep = torch.ones(4 * H, dtype=torch.bool)
    keep[H:2 * H] = False
    assert torch.equal(shift[keep], base[keep])
    default = NormLSTM(I, H, norm=norm).layers[0].gate_shift()[H:2 * H]
    if norm == "bn_recurrent":  # Cooijmans et al.'s code
        assert torch.all(default == 1.0)
    with pytest.raises(ValueError, match="a tanh RNN has no forget gate"):
        NormRNN(I, H, forget_bias=1.0)


# ----------------------------------------------------------------------------- proj_size
@pytest.mark.parametrize("norm", list(VARIANTS))
def test_projection_of_every_variant_matches_brute_force(norm):
    """h_t = W_hr (σ(o) tanh(N_cell(c_t))) (nn.LSTM's proj_size), W_h (4H, P), in training
    with padding; states (L, B, P) and (L, B, H)."""
    torch.manual_seed(0)
    m = NormLSTM(I, H, proj_size=2, norm=norm, backend="reference").double()
    x, lengths = torch.randn(T, B, I, dtype=f64), torch.tensor(LENGTHS)
    mask = torch.arange(T)[:, None] < lengths[None]
    h0, c0 = torch.randn(1, B, 2, dtype=f64), torch.randn(1, B, H, dtype=f64)
    out, (h, c) = m(x, (h0, c0), lengths=lengths)
    want, h_b, c_b = brute.lstm_layer(m.layers[0], x, h0[0], c0[0], mask)
    assert out.shape == (T, B, 2) and h.shape == (1, B, 2) and c.shape == (1, B, H)
    for a, b in ((out, want), (h[0], h_b), (c[0], c_b)):
        torch.testing.assert_close(a, b, **EXACT)
    steps, state = [], (h0, c0)  # the step API carries the projected h too
    m.eval()
    out, _ = m(x, (h0, c0))
    for t in range(T):
        y, state = m.step(x[t], state, t)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps), out, **EXACT)


def test_projection_backends():
    """The fused kernels refuse a projection at construction; auto falls back to cuDNN/ATen
    for norm='none' and to the reference loop for the others, wherever kernels would run."""
    with pytest.raises(ValueError, match="backend='fused' has no kernel for proj_size > 0"):
        NormLSTM(I, H, proj_size=2, norm="bn_recurrent", backend="fused")
    x = torch.randn(T, B, I)
    assert NormLSTM(I, H, proj_size=2).resolve_backend(x, compiled=True) == "native"
    assert NormLSTM(I, H, proj_size=2, norm="ln").resolve_backend(x, compiled=True) == "reference"
    assert NormLSTM(I, H, norm="ln").resolve_backend(x, compiled=True) == "fused"
    for bad in (H, -1, 1.5):
        with pytest.raises(ValueError, match=r"proj_size must be an int in \[0, hidden_size\)"):
            NormLSTM(I, H, proj_size=bad)


def test_a_population_of_projected_layers_is_its_members():
    torch.manual_seed(0)
    members = [NormLSTM(I, H, 2, proj_size=2, norm="bn_recurrent", backend="reference").double() for _ in range(2)]
    pop = NormLSTM.stack(members)
    x = torch.randn(T, 2, B, I, dtype=f64)
    out, (h, c) = pop(x, lengths=torch.tensor(LENGTHS))
    for m, member in enumerate(members):
        want, (hm, cm) = member(x[:, m], lengths=torch.tensor(LENGTHS))
        for a, b in ((out[:, m], want), (h[:, m], hm), (c[:, m], cm)):
            torch.testing.assert_close(a, b, **EXACT)
    assert pop.member(1).layers[1].weight_hr.shape == (2, H)


def test_batch_first_errors_show_the_shape_given():
    m = NormLSTM(I, H, batch_first=True, backend="reference").double()
    with pytest.raises(RuntimeError, match=re.escape(
            f"expected input (B, T, {I}) (batch_first=True); got ({B}, {T}, 5)")):
        m(torch.randn(B, T, 5, dtype=f64))
    with pytest.raises(RuntimeError, match=re.escape(f"must be (B,)=({B},) in [1, {T}]")):
        m(torch.randn(B, T, I, dtype=f64), lengths=torch.tensor([T + 1, 1, 1]))


# ----------------------------------------------------------------------------- training, split_bias
def nn_training_script(RNN, weights, kind):
    """A few SGD steps (momentum, weight decay) of a script written for nn.LSTM / nn.RNN;
    returns the losses and the trained weights as a state dict of ``RNN``."""
    model = RNN(I, H, 2, batch_first=True, bidirectional=True, dtype=f64)
    model.load_state_dict(weights)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    torch.manual_seed(4)
    losses = []
    for _ in range(3):
        x = torch.randn(B, T, I, dtype=f64)
        out, last = model(pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True,
                                               enforce_sorted=False))
        h = last[0] if kind == "lstm" else last
        loss = pad_packed_sequence(out, batch_first=True)[0].square().mean() + h.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), model


@pytest.mark.parametrize("backend", ["native", "reference",
                                     pytest.param("fused", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_split_bias_trains_as_nn_lstm(kind, backend):
    """split_bias=True keeps nn.LSTM's b_ih and b_hh, so optimizer steps (not only gradients)
    are nn.LSTM's: same losses, same trained weights. With one b (the default) the gradients
    are equal but an SGD step moves b_ih + b_hh twice as far as b, which the last lines show."""
    torch_cls, cls = (nn.LSTM, NormLSTM) if kind == "lstm" else (nn.RNN, NormRNN)
    weights = torch_cls(I, H, 2, batch_first=True, bidirectional=True, dtype=f64).state_dict()
    ref, trained = nn_training_script(torch_cls, weights, kind)
    make = lambda *a, **kw: cls(*a, **kw, backend=backend, split_bias=True)  # noqa: E731
    got, ours = nn_training_script(make, weights, kind)
    torch.testing.assert_close(got, ref, **EXACT)
    assert {"layers.0.bias_ih", "layers.0.bias_hh"} <= ours.state_dict().keys()
    theirs = ours.to_torch().state_dict()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(theirs[key], value, **EXACT, msg=key)
    one_b, _ = nn_training_script(lambda *a, **kw: cls(*a, **kw, backend=backend), weights, kind)
    torch.testing.assert_close(one_b[0], ref[0], **EXACT)
    assert not torch.allclose(one_b[1:], ref[1:], rtol=0, atol=1e-9)


def test_split_bias_parameters_and_refusals():
    layer = NormLSTM(I, H, split_bias=True, forget_bias=1.0).layers[0]
    assert layer.bias is None and {"bias_ih", "bias_hh"} <= dict(layer.named_parameters()).keys()
    assert torch.all(layer.gate_bias()[H:2 * H] == 1.0)  # b_ih + b_hh is the forget bias
    ln = NormLSTM(I, H, norm="ln", split_bias=True)  # b beside the layer norms, split too
    lstm = nn.LSTM(I, H).double()
    ln.double().load_state_dict({**ln.state_dict(), **{k: v for k, v in lstm.state_dict().items()}}, strict=False)
    torch.testing.assert_close(ln.layers[0].bias_hh, lstm.bias_hh_l0, **EXACT)
    converted = NormLSTM.from_lstm(lstm, split_bias=True)
    assert converted.bias_ih_l0 is not lstm.bias_ih_l0
    assert torch.equal(converted.bias_ih_l0, lstm.bias_ih_l0) and torch.equal(converted.bias_hh_l0, lstm.bias_hh_l0)
    assert all(torch.equal(converted.to_lstm().state_dict()[k], v) for k, v in lstm.state_dict().items())
    for kw, why in ((dict(norm="bn_input"), "norm='bn_input' has no b"), (dict(bias=False), "but bias=False")):
        with pytest.raises(ValueError, match=re.escape(why)):
            NormLSTM(I, H, split_bias=True, **kw)


def test_a_population_steps_as_its_sequence_call():
    pop = NormLSTM(I, H, 2, norm="bn_sum", population=2, backend="reference").double()
    x = torch.randn(T, 2, B, I, dtype=f64)
    out, last = pop(x)
    state, outs = None, []
    for t in range(T):
        y, state = pop.step(x[t], state, t)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs), out, **EXACT)
    for a, b in zip(state, last):
        torch.testing.assert_close(a, b, **EXACT)


def test_nn_lstm_parameter_names_and_flatten_parameters():
    """Scripts that reach nn.LSTM's parameters by name (to initialise them, say) reach ours."""
    m = NormLSTM(I, H, 2, bidirectional=True, proj_size=2)
    assert m.weight_hh_l1_reverse is m.layers[3].weight_hh and m.weight_hr_l0 is m.layers[0].weight_hr
    nn.init.zeros_(m.weight_ih_l1)
    assert torch.all(m.layers[2].weight_ih == 0)
    m.flatten_parameters()  # nn.LSTM's cuDNN call: nothing to do
    split = NormLSTM(I, H, split_bias=True)
    assert split.bias_hh_l0 is split.layers[0].bias_hh
    for layer, name, why in ((m, "bias_ih_l0", "split_bias=True keeps nn.LSTM's two"),
                             (NormLSTM(I, H, norm="bn_sum"), "bias_hh_l0", "it has no bias"),
                             (split, "weight_hr_l0", "no projection"),
                             (split, "weight_ih_l1", "num_layers=1"),
                             (split, "weights_ih_l0", "no attribute")):
        with pytest.raises(AttributeError, match=re.escape(why)):
            getattr(layer, name)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_split_bias_draws_nn_lstms_initial_weights(kind):
    """With split_bias (nn.LSTM's parameters in nn.LSTM's order) and the default init, the same
    seed gives nn.LSTM's own initial weights, in the dtype asked for: a seeded script swapping
    the class starts where nn.LSTM starts."""
    torch_cls, cls = (nn.LSTM, NormLSTM) if kind == "lstm" else (nn.RNN, NormRNN)
    args = dict(num_layers=2, bidirectional=True, dtype=f64, **({"proj_size": 2} if kind == "lstm" else {}))
    torch.manual_seed(7)
    theirs = torch_cls(I, H, **args)
    torch.manual_seed(7)
    ours = cls(I, H, **args, split_bias=True)
    for name, value in theirs.named_parameters():
        assert torch.equal(getattr(ours, name), value), name
