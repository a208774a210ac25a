"""Character-level language models on PTB: Laurent et al.'s appendix tanh RNN and Cooijmans
et al.'s 1000-unit (BN-)LSTM.

Both read (input, target) batches of (T, B) symbol ids and are stateless across batches (each
fixed-length sequence starts from a zero state, ``bnrnn.data.ptb_char``).

Objective and metrics. The objective is the frame-wise cross-entropy in nats per character,
**averaged over all T x B characters of the batch**. Laurent et al. report exactly this quantity
(Table 3, "frame-wise cross-entropy") and searched the SGD learning rate in [1e-4, 1] for it;
their best baseline (lr 0.42, momentum 0.95) only makes sense for a per-character mean — summed
over 100 steps, the same lr would be a 100x larger step. Adam (Cooijmans) is invariant to the
scale anyway. Metrics are character-weighted: ``ce`` = Σ NLL / Σ characters (nats) and
``bpc`` = ce / ln 2 (bits per character).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnrnn.contracts import StepOutput
from bnrnn.nn import NormLSTM, NormRNN


class CharLM(nn.Module):
    """input ids -> ``embed`` -> ``rnn`` -> ``decoder`` -> softmax over the symbols.

    Subclasses build ``embed`` ((T, B) ids -> (T, B, E)), ``rnn`` (a NormRNN/NormLSTM,
    (T, B, E) -> (T, B, H)) and ``decoder`` (H -> V); the objective and metrics live here once.
    """

    selection = "ce"
    embed: nn.Module
    rnn: nn.Module
    decoder: nn.Linear

    def forward(self, batch: tuple[Tensor, Tensor], state=None) -> StepOutput:
        """batch: (input, target), each (T, B) int64 symbol ids; state: ignored (not carried)."""
        x, y = batch
        T, B = y.shape
        out, _ = self.rnn(self.embed(x))  # zero initial state for every sequence
        logits = self.decoder(out)  # (T, B, V)
        if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in fp32 under autocast
            logits = logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        return StepOutput(objective=nll / (T * B), loss_sum=nll.detach(), count=T * B)

    @property
    def chance_loss(self) -> float:
        """A uniform prediction's cross-entropy, ln V: the line a diverged run stays above."""
        return math.log(self.decoder.out_features)

    @staticmethod
    def metrics(totals: dict) -> dict[str, float]:
        ce = totals["loss_sum"] / totals["count"]
        return {"ce": ce, "bpc": ce / math.log(2)}


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

    Parameters (``reset_parameters``): NormLSTM ``init="orthogonal"`` (each gate's recurrent and
    input matrices orthogonal, biases zero, forget bias from ``norm_options``); ``decoder.weight``
    (V, H) Glorot-uniform, ``decoder.bias`` (V) zero.
    """

    selection = "bpc"

    def __init__(self, vocab_size: int, hidden_size: int = 1000, num_layers: int = 1,
                 norm: str = "none", embedding_size: int | None = None,
                 norm_options: dict | None = None):
        super().__init__()
        if embedding_size is None:
            self.embed, input_size = OneHot(vocab_size), vocab_size
        else:
            self.embed, input_size = nn.Embedding(vocab_size, embedding_size), embedding_size
        self.rnn = NormLSTM(input_size, hidden_size, num_layers=num_layers, norm=norm,
                            init="orthogonal", **(norm_options or {}))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if isinstance(self.embed, nn.Embedding):
            nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.rnn.reset_parameters()
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)
