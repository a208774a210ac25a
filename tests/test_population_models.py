"""Population models (bnrnn/models/population.py): member m of ``PopulationLM.stack(models)``
computes what models[m] computes alone on its own batch — loss, statistics, carried state,
parameter gradients, batch-norm running statistics — in float64, and ``member(m)`` gives the
ordinary model back. (WordLM takes its log-softmax in float32 whatever the model's dtype, so its
loss and gradients agree to float32 rounding, the rest to float64 rounding.)"""
import pytest
import torch

from bnrnn.models.char import CellBias, CharLSTM, CharRNN
from bnrnn.models.lm import WordLM
from bnrnn.models.population import PopulationLM, seeded_population

f64 = torch.float64
M, V, T, B = 3, 11, 5, 4
SEEDS = [3, 1, 4]

def learned_initial_state(model):
    """The model with its learned (h0, c0) — and cell biases β_c, where it has them — moved off
    zero: each member's own values."""
    with torch.no_grad():
        for s in (model.h0, model.c0):
            s.normal_()
        for layer in model.rnn.layers:
            if isinstance(layer.norm_cell, CellBias):
                layer.norm_cell.bias.normal_()
    return model


BUILDERS = {
    "word-none": lambda: WordLM(V, hidden_size=6, num_layers=2),
    "word-bn": lambda: WordLM(V, hidden_size=6, num_layers=2, norm="bn_recurrent",
                              norm_options={"max_steps": T}),
    "char_rnn-bn_sum": lambda: CharRNN(V, embedding_size=5, hidden_size=6, num_layers=2,
                                       norm="bn_sum", norm_options={"max_steps": T}),
    "char_lstm-onehot": lambda: CharLSTM(V, hidden_size=6),
    # two layers: h0, c0 (L, H) per member, a layer axis to keep apart from the member axis;
    # bn_input, as bn_recurrent's normalization of W_h h0 (one vector over the batch) removes h0
    "char_lstm-h0c0": lambda: learned_initial_state(CharLSTM(
        V, hidden_size=6, num_layers=2, norm="bn_input", norm_options={"max_steps": T},
        learn_initial_state=True)),
    # Cooijmans' official baseline (protocol=cooijmans_code): h = σ(o) tanh(c + β_c), learned h0, c0
    "char_lstm-cell_bias": lambda: learned_initial_state(CharLSTM(
        V, hidden_size=6, num_layers=2, learn_initial_state=True, cell_bias=True)),
}


def models_for(name):
    out = []
    for s in SEEDS:
        torch.manual_seed(s)
        out.append(BUILDERS[name]().to(f64))
    return out


def member_batches(steps=T):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(V, (steps + 1, M, B), generator=g)
    return ids[:-1], ids[1:]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_population_member_equals_the_model_alone(name):
    models = models_for(name)
    pop = PopulationLM.stack(models)
    x, y = member_batches()
    # WordLM's loss is float32 (module doc); everything upstream of it float64
    loss_rtol, grad_rtol, grad_atol = ((1e-6, 1e-5, 1e-7) if name.startswith("word")
                                      else (1e-12, 1e-10, 1e-13))
    state = None
    for _ in range(2):  # the word LM carries its state into the second batch
        out = pop((x, y), state)
        out.objective.backward()
        assert out.loss_sum.shape == (M,)
        for m, model in enumerate(models):
            alone = model((x[:, m], y[:, m]), None if state is None else
                          tuple(s[:, m] for s in state))
            alone.objective.backward()
            torch.testing.assert_close(out.loss_sum[m], alone.loss_sum, rtol=loss_rtol, atol=0)
            assert out.count == alone.count
            for k, v in alone.sums.items():
                torch.testing.assert_close(out.sums[k][m], v, rtol=loss_rtol, atol=0)
            if alone.state is not None:
                for a, b in zip(out.state, alone.state):
                    torch.testing.assert_close(a[:, m], b, rtol=grad_rtol, atol=1e-12)
        state = out.state if out.state is not None else None
    grads = dict(pop.named_parameters())
    for m, model in enumerate(models):
        for k, p in model.named_parameters():
            torch.testing.assert_close(grads[k].grad[m], p.grad, rtol=grad_rtol, atol=grad_atol)
        stats = pop.state_dict()
        for k, b in model.named_buffers():
            if k in stats:
                torch.testing.assert_close(stats[k][m], b, rtol=grad_rtol, atol=1e-12)


@pytest.mark.parametrize("name", ["word-bn", "char_rnn-bn_sum", "char_lstm-h0c0", "char_lstm-cell_bias"])
def test_member_gives_the_ordinary_model_back(name):
    models = models_for(name)
    pop = PopulationLM.stack(models)
    for m, model in enumerate(models):
        back = pop.member(m)
        assert type(back) is type(model)
        assert back.state_dict().keys() == model.state_dict().keys()
        for k, v in model.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
    assert all(p.shape[0] == M for p in pop.parameters())
    assert torch.equal(pop.member(-1).state_dict()[k], models[-1].state_dict()[k])
    with pytest.raises(IndexError, match=rf"\[0, {M}\).*got {M}"):
        pop.member(M)
    with pytest.raises(TypeError, match="must be an int"):
        pop.member(1.0)


def test_a_seeded_population_holds_each_seeds_single_run_init():
    pop = seeded_population(BUILDERS["char_rnn-bn_sum"], SEEDS)
    for m, s in enumerate(SEEDS):
        torch.manual_seed(s)
        single = BUILDERS["char_rnn-bn_sum"]()
        for k, v in single.state_dict().items():
            assert torch.equal(pop.state_dict()[k][m], v), (m, k)
    assert not torch.equal(pop.embed.weight[0], pop.embed.weight[1])


def test_stacking_refuses_mixed_models():
    with pytest.raises(ValueError, match="models\\[1\\] differs from models\\[0\\]"):
        PopulationLM.stack([WordLM(V, hidden_size=6), WordLM(V, hidden_size=8)])
    with pytest.raises(ValueError, match="models\\[1\\] is a CharRNN"):
        PopulationLM.stack([WordLM(V, hidden_size=6), CharRNN(V, 6, 6)])
    with pytest.raises(ValueError, match=r"\(T, B\) or \(T, M=2, B\)"):
        PopulationLM.stack([WordLM(V, hidden_size=6)] * 2)((torch.zeros(T, 3, B, dtype=torch.long),) * 2)


def test_stacking_refuses_what_a_population_cannot_carry():
    from bnrnn.models.char import CharLSTM

    word = WordLM(V, hidden_size=6)
    word.scale = torch.nn.Parameter(torch.ones(()))  # a parameter of the model itself
    with pytest.raises(ValueError, match=r"WordLM's own parameters \(scale\) have no population form"):
        PopulationLM.stack([word] * 2)
    with_bias, without = CharLSTM(V, 6, cell_bias=True), CharLSTM(V, 6)
    with pytest.raises(ValueError, match=r"models\[1\] differs from models\[0\] in its parameter shapes"):
        PopulationLM.stack([with_bias, without])
    without.rnn.backend = "reference"  # otherwise alike: the layers differ in their cell slot
    with pytest.raises(ValueError, match=r"layers\[1\] has layers.0.norm_cell='NoNorm' \(layers\[0\]: 'CellBias'\)"):
        type(with_bias.rnn).stack([with_bias.rnn, without.rnn])


def test_a_cell_bias_population_stays_on_the_reference_loop():
    """No kernel has the shift inside tanh: the population, like the single model, runs the
    reference loop, and the fused backend refuses its layers by name."""
    from bnrnn.nn import fused

    pop = PopulationLM.stack(models_for("char_lstm-cell_bias"))
    assert all(isinstance(layer.norm_cell, CellBias) and layer.norm_cell.bias.shape == (M, 6)
               for layer in pop.rnn.layers)
    x = torch.zeros(T, M, B, V, dtype=f64)
    assert pop.rnn.resolve_backend(x, compiled=True) == "reference"
    if fused.triton is not None:
        reason = fused.refusal_of(pop.rnn.layers[0], B)
        assert isinstance(reason, NotImplementedError) and "CellBias in norm_cell" in str(reason)


@pytest.mark.parametrize("norm", ["none", "bn_input"])
def test_a_speech_population_member_equals_the_classifier_alone(norm):
    """The framewise classifier on one padded batch for every member: loss, frame count, errors,
    gradients and sequence-wise BN statistics per member."""
    from bnrnn.models.speech import IGNORE, FramewiseClassifier

    F_, C = 3, 5
    models = []
    for s in SEEDS:
        torch.manual_seed(s)
        models.append(FramewiseClassifier(F_, C, hidden_size=4, num_layers=2, norm=norm,
                                          feature_mean=[0.1, -0.2, 0.3], feature_std=[1.0, 2.0, 0.5]).to(f64))
    pop = PopulationLM.stack(models)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([T, 3, 4, 2])
    features = torch.randn(T, B, F_, generator=g, dtype=f64)
    labels = torch.randint(C, (T, B), generator=g)
    labels[torch.arange(T)[:, None] >= lengths[None, :]] = IGNORE
    out = pop((features, lengths, labels))
    out.objective.backward()
    grads = dict(pop.named_parameters())
    for m, model in enumerate(models):
        alone = model((features, lengths, labels))
        alone.objective.backward()
        torch.testing.assert_close(out.loss_sum[m], alone.loss_sum, rtol=1e-6, atol=0)  # float32 loss
        assert out.count[m] == alone.count and out.sums["errors"][m] == alone.sums["errors"]
        for k, p in model.named_parameters():
            torch.testing.assert_close(grads[k].grad[m], p.grad, rtol=1e-5, atol=1e-7)
        for k, b in model.state_dict().items():
            torch.testing.assert_close(pop.state_dict()[k][m], b, rtol=1e-10, atol=1e-12)
        assert type(pop.member(m)) is FramewiseClassifier
