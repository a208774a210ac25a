"""Char-level models: shapes, objective scaling, initialisation, gradients, a few-batch run."""
import math

import pytest
import torch
from torch.func import functional_call

from bnrnn.models.char import CharLSTM, CharRNN
from tests.helpers import make_cfg, train

V, T, B = 7, 6, 4


def batch(vocab=V, steps=T, size=B):
    x = torch.randint(vocab, (steps + 1, size))
    return x[:-1], x[1:]


@pytest.mark.parametrize("norm", ["none", "bn_sum"])
def test_char_rnn_objective_is_mean_nats_per_char(norm):
    model = CharRNN(V, embedding_size=5, hidden_size=8, num_layers=3, norm=norm,
                    norm_options={"max_steps": T})
    x, y = batch()
    out = model((x, y))
    assert out.count == T * B and out.state is None
    assert out.objective.item() == pytest.approx(out.loss_sum.item() / (T * B))
    logits = model.decoder(model.rnn(model.embed(x))[0])  # (T, B, V)
    assert logits.shape == (T, B, V)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert out.objective.item() == pytest.approx(ref.item(), rel=1e-6)
    m = model.metrics({"loss_sum": out.loss_sum.item(), "count": out.count})
    assert m["bpc"] == pytest.approx(m["ce"] / math.log(2)) and model.selection == "ce"


def test_char_rnn_initialisation_follows_the_appendix():
    model = CharRNN(50, norm="bn_sum")  # the paper's sizes: 250, 3 layers, 50 symbols
    emb = model.embed.weight
    assert emb.shape == (50, 250) and abs(emb.mean().item()) < 0.02 and emb.std().item() == pytest.approx(1, abs=0.02)
    assert torch.all(model.decoder.bias == 0)
    bound = math.sqrt(6 / (250 + 50))  # Glorot-uniform bound of the (50, 250) decoder
    assert model.decoder.weight.abs().max() <= bound and model.decoder.weight.abs().max() > 0.9 * bound
    layer = model.rnn.layers[1]
    assert layer.weight_hh.abs().max() <= math.sqrt(6 / 500) + 1e-7
    assert layer.bias is None  # bn_sum: β replaces the bias; γ = 1, β = 0, stats per step
    assert torch.all(layer.norm_sum.weight == 1) and torch.all(layer.norm_sum.bias == 0)
    assert layer.norm_sum.running_mean.shape == (100, 250)
    assert sum(p.numel() for p in model.parameters()) == (
        50 * 250 + 3 * (250 * 250 * 2 + 2 * 250) + 250 * 50 + 50)


@pytest.mark.parametrize("model_fn", [
    lambda: CharRNN(V, embedding_size=3, hidden_size=4, num_layers=2, norm="bn_sum",
                    norm_options={"max_steps": T, "backend": "reference"}),
    lambda: CharLSTM(V, hidden_size=4, norm="bn_recurrent",
                     norm_options={"max_steps": T, "backend": "reference"}),
], ids=["rnn_bn_sum", "lstm_bn_recurrent"])
def test_gradients_match_finite_differences(model_fn):
    model = model_fn().double().train()
    data = batch()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in model.named_parameters())

    def objective(*ps):
        return functional_call(model, dict(zip(names, ps)), (data,)).objective

    assert torch.autograd.gradcheck(objective, params, eps=1e-6, atol=1e-6, fast_mode=True)


def test_char_lstm_cooijmans_settings():
    model = CharLSTM(50, hidden_size=16, norm="bn_recurrent", norm_options={"forget_bias": 1.0})
    layer = model.rnn.layers[0]
    assert model.selection == "bpc" and layer.weight_ih.shape == (64, 50)  # one-hot input
    for g in range(4):  # each gate's recurrent matrix orthogonal
        w = layer.weight_hh[g * 16:(g + 1) * 16]
        assert torch.allclose(w @ w.t(), torch.eye(16), atol=1e-5)
    assert torch.allclose(layer.norm_hh.weight, torch.full((64,), 0.1))  # Cooijmans γ = 0.1
    assert torch.all(layer.bias[16:32] == 1.0)  # forget-gate bias
    x, y = batch(vocab=50)
    out = model((x, y))
    assert out.objective.item() == pytest.approx(math.log(50), abs=0.5)


@pytest.mark.parametrize("experiment,norm,key", [("grid_char_rnn", "bn_sum", "valid_ce"),
                                                 ("cooijmans_char_ptb", "bn_recurrent", "valid_bpc")])
def test_experiment_trains_a_few_batches(ptb_char_root, tmp_path, experiment, norm, key):
    objective, final, rows = train([
        f"experiment={experiment}", f"data.root={ptb_char_root}", f"model.norm={norm}",
        "model.hidden_size=16", "data.limit_batches=3", "data.seq_len=20", "data.batch_size=8",
        "data.eval_batch_size=64", "trainer.max_epochs=2", "quiet=true", "device=cpu",
        "trainer.stream_splits=[]", "trainer.eval_lengths=[]"], tmp_path)  # tests/test_train_evaluation.py
    assert final["status"] == "completed" and final["selection"] == key and final["shortened"]
    assert objective == min(r[key] for r in rows)
    assert rows[1]["train_ce"] < rows[0]["train_ce"] < math.log(50) + 0.5
    assert final["test"]["bpc"] == pytest.approx(final["test"]["ce"] / math.log(2))


def test_protocol_values():
    grid, coo = make_cfg(["experiment=grid_char_rnn"]), make_cfg(["experiment=cooijmans_char_ptb"])
    assert (grid.data.seq_len, grid.model.embedding_size, grid.model.hidden_size, grid.model.num_layers,
            grid.trainer.max_epochs, grid.optim._target_) == (100, 250, 250, 3, 20, "torch.optim.SGD")
    assert (coo.model.hidden_size, coo.optim.lr, coo.data.batch_size, coo.data.seq_len,
            coo.trainer.clip_grad_norm, coo.trainer.max_epochs) == (1000, 2e-3, 64, 100, 1.0, 50)
    assert grid.model.norm_options.max_steps == 100 and grid.data.seed == grid.seed


def lstm_brute(layer, x, h, c, cell_shift):
    """h_t = σ(o) tanh(c_t + β_c), gates W_h h + W_x x + b, order i, f, g, o: written out."""
    H, outs = layer.hidden_size, []
    for t in range(x.shape[0]):
        a = x[t] @ layer.weight_ih.T + h @ layer.weight_hh.T + layer.bias
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c + cell_shift)
        outs.append(h)
    return torch.stack(outs)


def test_cooijmans_code_parameters_whole_orthogonal_decoder_initial_state():
    H = 8
    model = CharLSTM(V, hidden_size=H, orthogonal="whole", decoder_init="orthogonal",
                     learn_initial_state=True, norm_options={"forget_bias": 1.0})
    layer = model.rnn.layers[0]
    # the whole (4H, H) and (4H, V) matrices have orthonormal columns (the code's Wa, Wx rows)
    for w in (layer.weight_hh, layer.weight_ih):
        assert torch.allclose(w.t() @ w, torch.eye(w.shape[1]), atol=1e-5)
    block = layer.weight_hh[:H]  # one gate's block of a whole-matrix draw is not orthogonal
    assert not torch.allclose(block @ block.t(), torch.eye(H), atol=1e-2)
    dec = model.decoder.weight  # (V, H): orthonormal rows, the code's (H, V) Wy columns
    assert torch.allclose(dec @ dec.t(), torch.eye(V), atol=1e-5)
    assert torch.all(layer.bias[H:2 * H] == 1) and torch.all(model.decoder.bias == 0)
    # learned initial state: zeros at first, so the first pass equals a zero-state one, and it
    # receives a gradient
    assert model.h0.shape == model.c0.shape == (1, H) and not model.h0.any()
    x, y = batch()
    out = model((x, y))
    ref_out, _ = model.rnn(model.embed(x))
    ref = torch.nn.functional.cross_entropy(model.decoder(ref_out).flatten(0, 1), y.flatten())
    assert out.objective.item() == pytest.approx(ref.item(), rel=1e-6)
    out.objective.backward()
    assert model.h0.grad.abs().sum() > 0 and model.c0.grad.abs().sum() > 0
    with torch.no_grad():  # a learned state is what every sequence starts from
        model.h0.normal_()
        model.c0.normal_()
    start = tuple(s.unsqueeze(1).expand(1, B, H) for s in (model.h0, model.c0))
    ref_out, _ = model.rnn(model.embed(x), start)
    ref = torch.nn.functional.cross_entropy(model.decoder(ref_out).flatten(0, 1), y.flatten())
    assert model((x, y)).objective.item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="orthogonal must be one of per_gate, whole"):
        CharLSTM(V, hidden_size=H, orthogonal="blocks")


def test_baseline_cell_bias_matches_the_equations():
    torch.manual_seed(3)
    model = CharLSTM(V, hidden_size=6, cell_bias=True).double()
    layer = model.rnn.layers[0]
    assert model.rnn.resolve_backend(torch.zeros(1, 1, V, dtype=torch.float64)) == "reference"
    assert torch.all(layer.norm_cell.bias == 0)  # starts as the plain LSTM
    with torch.no_grad():
        layer.norm_cell.bias.normal_()
    x, y = batch()
    emb = model.embed(x).double()
    zeros = torch.zeros(B, 6, dtype=torch.float64)
    got, _ = model.rnn(emb)
    want = lstm_brute(layer, emb, zeros, zeros, layer.norm_cell.bias)
    assert torch.allclose(got, want, atol=1e-12)
    assert not torch.allclose(got, lstm_brute(layer, emb, zeros, zeros, 0.0), atol=1e-3)
    assert "norm_cell.bias" in dict(model.rnn.layers[0].named_parameters())
    # a normalized cell keeps its own β_c (the code's BN-LSTM): nothing is added
    bn = CharLSTM(V, hidden_size=6, norm="bn_recurrent", cell_bias=True)
    assert type(bn.rnn.layers[0].norm_cell).__name__ == "SeqBatchNorm" and bn.rnn.backend == "auto"
    with pytest.raises(ValueError, match="no 'native' kernel"):
        CharLSTM(V, hidden_size=6, cell_bias=True, norm_options={"backend": "native"})


@pytest.mark.parametrize("model_fn", [lambda: CharRNN(V, 3, 4, 2), lambda: CharLSTM(V, 4)],
                         ids=["rnn", "lstm"])
def test_error_rate_counts_wrong_argmax(model_fn):
    model = model_fn().eval()
    x, y = batch()
    out = model((x, y))
    logits = model.decoder(model.rnn(model.embed(x))[0])
    wrong = (logits.argmax(-1) != y).sum().item()
    m = model.metrics({"loss_sum": out.loss_sum.item(), "count": out.count,
                       "errors": out.sums["errors"].item()})
    assert out.sums["errors"].item() == wrong and m["err"] == pytest.approx(wrong / (T * B))
