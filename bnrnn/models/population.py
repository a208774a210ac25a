"""Population models: M language models (or framewise speech classifiers) of one configuration
as one module.

``PopulationLM.stack(models)`` puts M ordinary models side by side (the word LM
:class:`~bnrnn.models.lm.WordLM`, the character models :class:`~bnrnn.models.char.CharRNN` and
:class:`~bnrnn.models.char.CharLSTM`): every embedding becomes (M, V, E), every decoder
(M, V, H) + (M, V), the recurrent stack a population ``NormLSTM``/``NormRNN`` (docs/population.md),
and CharLSTM's learned initial states ``h0``, ``c0`` (L, H) become (M, L, H).
Its ``state_dict`` has the ordinary model's keys, each value with a leading member axis M, and
``member(m)`` gives member m back as an ordinary model. Built from M models constructed under M
seeds, member m's initial parameters are those of a single run with seed ``seeds[m]``.

Batches are (input, target) of (T, M, B) ids — member m's own batch in ``[:, m]`` — or (T, B),
one batch for every member; the speech classifier takes one (features, lengths, labels) batch
for every member (its data order is the data's ``batch_seed``, not the run's seed). The loss and every additive statistic come out per member, shaped
(M,); the objective is the sum of the members' own objectives (member m's parameters receive
exactly the gradient of its own objective: members share no computation).

Dropout (the word LM's input and output, every stack's between layers) draws one mask stream for
the whole population, unless :meth:`PopulationLM.use_streams` gives it per-member streams
(:mod:`bnrnn.nn.streams`): then member m's masks come from its own stream — its single run's,
when the streams hold each member's generator state at the start of training, as
``bnrnn.population_run`` gives them.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.contracts import StepOutput
from bnrnn.models.char import CharLM, CharLSTM
from bnrnn.models.lm import AUTHORS_EPS, WordLM
from bnrnn.models.speech import IGNORE, FramewiseClassifier
from bnrnn.nn.base import RecurrentStack, member_linear
from bnrnn.nn.norms import member_index, per_member
from bnrnn.nn.streams import MemberStreams, member_dropout


class PopulationEmbedding(nn.Module):
    """M embedding tables, ``weight`` (M, V, E): ids (T, M, B) -> (T, M, B, E), member m's ids
    looked up in its own table (one lookup in the (M·V, E) table, ids offset by m·V)."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def extra_repr(self) -> str:
        M, V, E = self.weight.shape
        return f"population={M}, {V}, {E}"

    def forward(self, ids: Tensor) -> Tensor:
        M, V, E = self.weight.shape
        offset = torch.arange(M, device=ids.device).view(M, 1) * V
        return F.embedding(ids + offset, self.weight.reshape(M * V, E))


class PopulationLinear(nn.Module):
    """M linear maps, ``weight`` (M, N, K), ``bias`` (M, N): (..., M, B, K) -> (..., M, B, N)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def extra_repr(self) -> str:
        M, N, K = self.weight.shape
        return f"population={M}, in_features={K}, out_features={N}, bias={self.bias is not None}"

    def forward(self, x: Tensor) -> Tensor:
        y = member_linear(x, self.weight)
        return y if self.bias is None else y + per_member(self.bias)


class MemberDropout(nn.Module):
    """nn.Dropout(p) of a population activation (..., M, B, F): with ``streams`` (set by
    :meth:`PopulationLM.use_streams`) member m's mask is drawn from its own stream, else one
    mask stream for the whole tensor (:func:`bnrnn.nn.streams.member_dropout`)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.streams: MemberStreams | None = None

    def forward(self, x: Tensor) -> Tensor:
        return member_dropout(x, self.p, self.training, self.streams)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# what each kind of submodule of an ordinary model becomes in a population; a module with no
# parameters or persistent buffers (the one-hot table) is kept as it is
def _populate(child: nn.Module, members: list[nn.Module]) -> nn.Module:
    if isinstance(child, RecurrentStack):
        return type(child).stack(members)
    if isinstance(child, nn.Dropout):
        if child.inplace:
            raise ValueError("PopulationLM.stack: nn.Dropout(inplace=True) has no population "
                             "form; build the model with inplace=False")
        return MemberDropout(child.p)
    if isinstance(child, nn.Embedding):
        return PopulationEmbedding(torch.zeros(len(members), *child.weight.shape,
                                               dtype=child.weight.dtype, device=child.weight.device))
    if isinstance(child, nn.Linear):
        w = child.weight
        bias = None if child.bias is None else w.new_zeros(len(members), *child.bias.shape)
        return PopulationLinear(w.new_zeros(len(members), *w.shape), bias)
    if not child.state_dict():
        return copy.deepcopy(child)
    raise ValueError(f"PopulationLM.stack: no population form of {type(child).__name__}; "
                     f"supported are embeddings, linear layers and NormLSTM/NormRNN stacks")


KINDS_BY_NAME = {"word": WordLM, "char": CharLM, "speech": FramewiseClassifier}
KINDS = tuple(KINDS_BY_NAME.values())


class PopulationLM(nn.Module):
    """M word or character language models side by side (module doc). Build with :meth:`stack`."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("PopulationLM.stack: no models given")
        first = models[0]
        if not isinstance(first, KINDS):
            raise ValueError(f"PopulationLM.stack: {type(first).__name__} is not a WordLM, "
                             f"CharRNN, CharLSTM or FramewiseClassifier")
        # parameters of the model itself: only CharLSTM's learned (h0, c0) have a population
        # form (_initial_state); any other would be silently unused, so it is refused
        own = [n for n, _ in first.named_parameters(recurse=False)]
        if own and not (isinstance(first, CharLSTM) and own == ["h0", "c0"]):
            raise ValueError(f"PopulationLM.stack: {type(first).__name__}'s own parameters "
                             f"({', '.join(own)}) have no population form; train its members one "
                             f"by one")
        for k, model in enumerate(models):
            if type(model) is not type(first):
                raise ValueError(f"PopulationLM.stack: models[{k}] is a {type(model).__name__}, "
                                 f"models[0] a {type(first).__name__}; a population has one kind")
            shapes = {n: v.shape for n, v in model.state_dict().items()}
            if shapes != {n: v.shape for n, v in first.state_dict().items()}:
                raise ValueError(f"PopulationLM.stack: models[{k}] differs from models[0] in its "
                                 f"parameter shapes; a population has one configuration")
        self.population = len(models)
        self.streams: MemberStreams | None = None  # one dropout mask stream for all (use_streams)
        self.kind = next(kind for kind, cls in KINDS_BY_NAME.items() if isinstance(first, cls))
        self.selection = first.selection
        self.chance_loss = first.chance_loss
        self.metrics = first.metrics  # per member: the ordinary model's metrics of its totals
        template = copy.deepcopy(first)
        self.__dict__["_template"] = template  # not a submodule: outside state_dict/parameters
        for name, child in first.named_children():
            setattr(self, name, _populate(child, [getattr(m, name) for m in models]))
        for name, param in first.named_parameters(recurse=False):  # CharLSTM's (h0, c0): (M, L, H)
            setattr(self, name, nn.Parameter(param.new_zeros(self.population, *param.shape)))
        for name, buffer in first.named_buffers(recurse=False):  # e.g. input statistics
            self.register_buffer(name, buffer.new_zeros(self.population, *buffer.shape),
                                 persistent=name in first.state_dict())
        states = [m.state_dict() for m in models]
        self.load_state_dict({k: torch.stack([s[k] for s in states]) for k in states[0]})
        self.train(first.training)

    stack = classmethod(lambda cls, models: cls(models))
    stack.__doc__ = "The population of M ordinary models of one kind and configuration."

    def use_streams(self, streams: MemberStreams | None) -> "PopulationLM":
        """Draw member m's dropout masks (input, output and between layers) from
        ``streams.member(m)``, its single run's stream when ``streams`` holds each member's
        generator state at the start of training (population_run does); None: one mask stream
        for the whole population. The streams must be for the device the model is on."""
        if streams is not None and not isinstance(streams, MemberStreams):
            raise TypeError(f"PopulationLM.use_streams: needs a MemberStreams (or None); got a "
                            f"{type(streams).__name__}: build one with MemberStreams.seeded(seeds, device)")
        if streams is not None and len(streams) != self.population:
            raise ValueError(f"PopulationLM.use_streams: a population of {self.population} "
                             f"members needs one stream each; got {len(streams)} streams")
        device = next(self.parameters()).device
        if streams is not None and streams.device.type != device.type:
            raise ValueError(f"PopulationLM.use_streams: the streams are {streams.device.type} "
                             f"generator states, the model is on {device}; build them for "
                             f"{device.type} (move the model first)")
        self.streams = streams
        for module in self.modules():
            if isinstance(module, MemberDropout):
                module.streams = streams
            elif isinstance(module, RecurrentStack):
                module.member_streams = streams
        return self

    def member(self, m: int) -> nn.Module:
        """Member m as an ordinary model (a copy of its parameters and statistics)."""
        m = member_index("PopulationLM.member", m, self.population)
        model = copy.deepcopy(self._template)
        model.load_state_dict({k: v[m] for k, v in self.state_dict().items()})
        return model.to(next(self.parameters()).device).train(self.training)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: tuple[Tensor, Tensor], state=None) -> StepOutput:
        """batch: (input, target), each (T, M, B) or (T, B) ids; loss_sum and sums (M,)."""
        if self.kind == "speech":
            return self._speech(*batch)
        x, y = (self._per_member(t) for t in batch)
        return self._word(x, y, state) if self.kind == "word" else self._char(x, y)

    def _per_member(self, ids: Tensor) -> Tensor:
        M = self.population
        if ids.dim() == 2:
            return ids.unsqueeze(1).expand(ids.shape[0], M, ids.shape[1])
        if ids.dim() != 3 or ids.shape[1] != M:
            raise ValueError(f"PopulationLM: a batch must be (T, B) or (T, M={M}, B) ids; got "
                             f"{tuple(ids.shape)}")
        return ids

    def _word(self, x: Tensor, y: Tensor, state) -> StepOutput:
        """WordLM's step per member: objective Σ_m NLL_m / B, ``batch_ppl`` the authors' metric."""
        T, M, B = y.shape
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        logits = self.decoder(self.drop(out))  # (T, M, B, V)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        nll = -logp.sum((0, 2))  # (M,)
        with torch.no_grad():
            authors = (logp.exp() + AUTHORS_EPS).log().mean((0, 2)).neg().exp()
        return StepOutput(objective=nll.sum() / B, loss_sum=nll.detach(), count=T * B,
                          sums={"batch_ppl": authors, "batches": torch.ones(M, device=y.device)},
                          state=tuple(s.detach() for s in state))

    def _initial_state(self, batch_size: int) -> tuple[Tensor, Tensor] | None:
        """CharLSTM.initial_state per member: the learned ``h0``, ``c0`` (M, L, H), each member's
        repeated over its batch, as the population stack's state ((L, M, B, H) each); None when
        the members start from zeros."""
        if getattr(self, "h0", None) is None:
            return None
        return tuple(s.transpose(0, 1).unsqueeze(2).expand(-1, -1, batch_size, -1).contiguous()
                     for s in (self.h0, self.c0))

    def _char(self, x: Tensor, y: Tensor) -> StepOutput:
        """CharLM's step per member: objective Σ_m (NLL_m / (T·B)), from the initial state
        (zeros, or CharLSTM's learned one)."""
        T, M, B = y.shape
        out, _ = self.rnn(self.embed(x), self._initial_state(B))
        logits = self.decoder(out)  # (T, M, B, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        nll = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none")
        nll = nll.view(T, M, B).sum((0, 2))
        errors = (logits.detach().argmax(-1) != y).sum((0, 2))  # the next-symbol error rate's count
        return StepOutput(objective=nll.sum() / (T * B), loss_sum=nll.detach(), count=T * B,
                          sums={"errors": errors})

    def _speech(self, features: Tensor, lengths: Tensor, labels: Tensor) -> StepOutput:
        """FramewiseClassifier's step per member, on one batch for every member: features
        (T, B, F), lengths (B,), labels (T, B); objective Σ_m CE_m / B, ``count`` and ``errors``
        (M,) device tensors."""
        T, B = labels.shape
        M = self.population
        mask = torch.arange(T, device=features.device)[:, None] < lengths.to(features.device)[None, :]
        x = (features.unsqueeze(1) - self.feature_mean.unsqueeze(-2)) / self.feature_std.unsqueeze(-2)
        x = x * mask.unsqueeze(1).unsqueeze(-1).to(x.dtype)  # (T, M, B, F); padding exact zeros
        out, _ = self.rnn(x, lengths=lengths)
        logits = self.output(out).float()  # (T, M, B, C)
        y = labels.unsqueeze(1).expand(T, M, B)
        ce = F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=IGNORE,
                             reduction="none").view(T, M, B).sum((0, 2))
        real = y != IGNORE
        errors = ((logits.argmax(-1) != y) & real).sum((0, 2))
        return StepOutput(objective=ce.sum() / B, loss_sum=ce.detach(), count=real.sum((0, 2)),
                          sums={"errors": errors})

    def extra_repr(self) -> str:
        return f"population={self.population}, kind={self.kind}"


def seeded_population(build, seeds: Sequence[int]) -> PopulationLM:
    """The population of ``build()`` called under ``torch.manual_seed(s)`` for each seed s:
    member m's initial parameters are those a single run seeded with seeds[m] creates. The
    global RNG is left as the last build left it."""
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build())
    return PopulationLM.stack(models)


__all__ = ["MemberDropout", "PopulationEmbedding", "PopulationLM", "PopulationLinear", "seeded_population"]
