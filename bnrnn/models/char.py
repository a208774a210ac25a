"""Character-level language models on PTB: Laurent et al.'s appendix tanh RNN and Cooijmans
et al.'s 1000-unit (BN-)LSTM.

Both read (input, target) batches of (T, B) symbol ids and are stateless across batches (each
fixed-length sequence starts from the initial state: zeros, or Cooijmans' learned (h0, c0),
``bnrnn.data.ptb_char``). ``score(batch, state, t0)`` is the same computation for one chunk of
a longer stream, the state carried in and out and ``t0`` the chunk's absolute time step (the
index of its per-step BN statistics): ``bnrnn.evaluation`` evaluates whole splits with it.

Objective and metrics. The objective is the frame-wise cross-entropy in nats per character,
**averaged over all T x B characters of the batch**. Laurent et al. report exactly this quantity
(Table 3, "frame-wise cross-entropy") and searched the SGD learning rate in [1e-4, 1] for it;
their best baseline (lr 0.42, momentum 0.95) only makes sense for a per-character mean — summed
over 100 steps, the same lr would be a 100x larger step. Adam (Cooijmans) is invariant to the
scale anyway. Metrics are character-weighted: ``ce`` = Σ NLL / Σ characters (nats),
``bpc`` = ce / ln 2 (bits per character) and ``err`` = the fraction of characters whose most
probable prediction is wrong (Cooijmans' code selects its model on it: ``error_rate``,
``penntreebank.py`` l. 309-313).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.contracts import StepOutput
from bnrnn.nn import NoNorm, NormLSTM, NormRNN
from bnrnn.nn.norms import leading, per_member

ORTHOGONAL = ("per_gate", "whole")
DECODER_INITS = ("glorot", "orthogonal")


class CharLM(nn.Module):
    """input ids -> ``embed`` -> ``rnn`` -> ``decoder`` -> softmax over the symbols.

    Subclasses build ``embed`` ((T, B) ids -> (T, B, E)), ``rnn`` (a NormRNN/NormLSTM,
    (T, B, E) -> (T, B, H)) and ``decoder`` (H -> V); the objective and metrics live here once.
    """

    selection = "ce"
    metric_names = ("ce", "bpc", "err")
    embed: nn.Module
    rnn: nn.Module
    decoder: nn.Linear

    def initial_state(self, batch_size: int):
        """The state every sequence starts from; None: zeros (the layer's default)."""
        return None

    def forward(self, batch: tuple[Tensor, Tensor], state=None) -> StepOutput:
        """batch: (input, target), each (T, B) int64 symbol ids; state: ignored (each batch of
        sequences starts from ``initial_state``, none is carried to the next)."""
        out = self.score(batch, None, 0)
        out.state = None
        return out

    def score(self, batch: tuple[Tensor, Tensor], state=None, t0: int = 0) -> StepOutput:
        """One chunk of (T, B) streams: ``state`` (None: ``initial_state``) carried in and out
        (detached), ``t0`` the absolute time step of the chunk's first frame."""
        x, y = batch
        T, B = y.shape
        if state is None:
            state = self.initial_state(B)
        out, state = self.rnn(self.embed(x), state, t0=t0)
        logits = self.decoder(out)  # (T, B, V)
        if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in fp32 under autocast
            logits = logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        errors = (logits.detach().argmax(-1) != y).sum()
        detached = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return StepOutput(objective=nll / (T * B), loss_sum=nll.detach(), count=T * B,
                          sums={"errors": errors}, state=detached)

    @property
    def chance_loss(self) -> float:
        """A uniform prediction's cross-entropy, ln V: the line a diverged run stays above."""
        return math.log(self.decoder.out_features)

    @staticmethod
    def metrics(totals: dict) -> dict[str, float]:
        ce = totals["loss_sum"] / totals["count"]
        out = {"ce": ce, "bpc": ce / math.log(2)}
        if "errors" in totals:
            out["err"] = totals["errors"] / totals["count"]
        return out


class CellBias(nn.Module):
    """The cell bias of Cooijmans' baseline LSTM: ``h_t = σ(o_t) tanh(c_t + β_c)``, β_c learned,
    initialised to 0. Their code builds the baseline from the BN-LSTM with every batch norm
    replaced by ``x + β`` (``BatchNormalization.construct_graph`` with ``baseline=True``,
    ``penntreebank.py`` l. 161-163), so the normalization of the cell (l. 265) leaves this
    shift in its output (l. 268). Fills a layer's ``norm_cell`` slot (the normalization
    interface: ``forward(x, mask, t0)``, ``step(x, t, mask)``); the carried c_t stays unshifted.

    ``population=M``: β_c is (M, H), member m's added to its own rows of x (..., M, B, H);
    :meth:`like` builds the slot's module for a population or a member (``NormLSTM.stack``,
    ``member``), as the layer's constructor does not put it there.
    """

    def __init__(self, num_features: int, population: int | None = None):
        super().__init__()
        self.num_features, self.population = num_features, population
        self.bias = nn.Parameter(torch.zeros(*leading(population), num_features))

    def like(self, population: int | None) -> "CellBias":
        """A CellBias of this size for ``population`` members (None: an ordinary layer's), on
        this one's device and dtype, zero (its values come with the layer's state_dict)."""
        return CellBias(self.num_features, population).to(self.bias.device, self.bias.dtype)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, t0: int = 0) -> Tensor:
        return x + per_member(self.bias)

    def step(self, x: Tensor, t: int, mask: Tensor | None = None) -> Tensor:
        return x + per_member(self.bias)

    def extra_repr(self) -> str:
        return str(self.num_features) + ("" if self.population is None else f", population={self.population}")


class OneHot(nn.Module):
    """(T, B) ids -> (T, B, V) one-hot vectors (Cooijmans et al.'s LSTM input), in the dtype and
    on the device the module was moved to (the rows of a non-persistent identity buffer)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("eye", torch.eye(num_classes), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.eye[x]

    def extra_repr(self) -> str:
        return str(self.num_classes)


class CharRNN(CharLM):
    """Laurent et al. appendix A: embedding 250 -> 3 x tanh RNN 250 -> softmax over 50 symbols.

    ``norm``: ``none`` (baseline) or ``bn_sum`` (eq. 17: BN(W_h h + W_x x), one mean and
    variance per feature and time step, γ/β shared over time, population statistics per step;
    ``norm_options`` passes ``stats``/``max_steps``/``momentum``/``gamma_init`` to NormRNN).

    Parameters (``reset_parameters``): ``embed.weight`` (V, E) ~ N(0, 1) (the paper's "isotropic
    Gaussian with zero mean and unit variance"); every RNN weight matrix Glorot-uniform with zero
    biases (NormRNN ``init="glorot"``; BN γ = 1, β = 0); ``decoder.weight`` (V, H) Glorot-uniform,
    ``decoder.bias`` (V) zero.
    """

    def __init__(self, vocab_size: int, embedding_size: int = 250, hidden_size: int = 250,
                 num_layers: int = 3, norm: str = "none", norm_options: dict | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.rnn = NormRNN(embedding_size, hidden_size, num_layers=num_layers, norm=norm,
                           init="glorot", **(norm_options or {}))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.rnn.reset_parameters()
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)


class CharLSTM(CharLM):
    """Cooijmans et al. §5.2: one-hot input -> one LSTM of 1000 units -> softmax, in bits/char.

    ``norm``: ``none`` or ``bn_recurrent`` (BN of W_h h, W_x x and the cell, per-step statistics,
    γ = 0.1 by NormLSTM's default for the variant). ``embedding_size``: None feeds one-hot
    vectors (Cooijmans' code); an int puts a learned N(0, 1) embedding in front instead.

    Parameters (``reset_parameters``): biases zero, forget bias from ``norm_options``;
    ``orthogonal="per_gate"`` makes each gate's (H, H) and (H, I) block of W_h, W_x orthogonal
    (NormLSTM ``init="orthogonal"``), ``"whole"`` the whole (4H, H) W_h and (4H, I) W_x
    semi-orthogonal (orthonormal columns): what Cooijmans' code draws for its (H, 4H) ``Wa``
    and (V, 4H) ``Wx`` (``penntreebank.py`` l. 39-47, 192, 201), transposed.
    ``decoder_init="glorot"``: ``decoder.weight`` (V, H) Glorot-uniform; ``"orthogonal"``: with
    orthonormal rows, as the code's (H, V) ``Wy`` (l. 346). ``decoder.bias`` (V) zero.
    ``learn_initial_state``: (h0, c0) are parameters, zeros at first, shared by every sequence
    (the code's ``h0``/``c0``, l. 198-199, 277-278; the paper's §2 calls them model
    parameters); otherwise every sequence starts from zeros. ``cell_bias``: a learned shift
    inside the output's tanh, ``tanh(N_cell(c_t) + β_c)``, the official baseline's
    (:class:`CellBias`). Variants that normalize the cell (``bn_recurrent``, ``ln``) already
    shift it by their own β_c, as the code's BN-LSTM does, and are left as they are; the others
    get a :class:`CellBias` in their empty cell slot and run on the reference loop (no cuDNN or
    fused cell has the shift: ``backend=auto`` picks the loop, ``native``/``fused`` are refused).
    """

    selection = "bpc"

    def __init__(self, vocab_size: int, hidden_size: int = 1000, num_layers: int = 1,
                 norm: str = "none", embedding_size: int | None = None,
                 norm_options: dict | None = None, orthogonal: str = "per_gate",
                 decoder_init: str = "glorot", learn_initial_state: bool = False,
                 cell_bias: bool = False):
        super().__init__()
        if orthogonal not in ORTHOGONAL or decoder_init not in DECODER_INITS:
            raise ValueError(f"CharLSTM: orthogonal must be one of {', '.join(ORTHOGONAL)} and "
                             f"decoder_init one of {', '.join(DECODER_INITS)}; got {orthogonal!r}, "
                             f"{decoder_init!r}")
        self.orthogonal, self.decoder_init = orthogonal, decoder_init
        if embedding_size is None:
            self.embed, input_size = OneHot(vocab_size), vocab_size
        else:
            self.embed, input_size = nn.Embedding(vocab_size, embedding_size), embedding_size
        self.rnn = NormLSTM(input_size, hidden_size, num_layers=num_layers, norm=norm,
                            init="orthogonal", **(norm_options or {}))
        if cell_bias:
            self._add_cell_bias()
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if learn_initial_state:
            self.h0 = nn.Parameter(torch.zeros(num_layers, hidden_size))
            self.c0 = nn.Parameter(torch.zeros(num_layers, hidden_size))
        else:
            self.h0 = self.c0 = None
        self.reset_parameters()

    def _add_cell_bias(self) -> None:
        rnn = self.rnn
        if not all(isinstance(layer.norm_cell, NoNorm) for layer in rnn.layers):
            return  # the cell's own normalization carries β_c
        if rnn.backend in ("native", "fused"):
            raise ValueError(f"CharLSTM: cell_bias=True has no {rnn.backend!r} kernel (cuDNN's and "
                             f"the fused cells have no shift inside tanh); use backend=auto or "
                             f"reference")
        rnn.backend = "reference"
        for layer in rnn.layers:
            layer.norm_cell = CellBias(rnn.hidden_size)

    def initial_state(self, batch_size: int):
        if self.h0 is None:
            return None
        return tuple(s.unsqueeze(1).expand(-1, batch_size, -1).contiguous() for s in (self.h0, self.c0))

    def reset_parameters(self) -> None:
        if isinstance(self.embed, nn.Embedding):
            nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.rnn.reset_parameters()
        if self.orthogonal == "whole":
            with torch.no_grad():
                for layer in self.rnn.layers:
                    nn.init.orthogonal_(layer.weight_hh)
                    nn.init.orthogonal_(layer.weight_ih)
        if self.decoder_init == "orthogonal":
            nn.init.orthogonal_(self.decoder.weight)
        else:
            nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)
        for s in (self.h0, self.c0):
            if s is not None:
                nn.init.zeros_(s)
