"""Word-level LSTM language model of Zaremba et al. (2014), as used in Laurent et al. §5.2."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bnrnn.contracts import StepOutput
from bnrnn.nn import NormLSTM


# The authors' cross-entropy adds this to every probability (norm-rnn model.py CrossEntropy).
AUTHORS_EPS = 1e-6


class WordLM(nn.Module):
    """embedding -> dropout -> NormLSTM (dropout between layers) -> dropout -> linear -> softmax.

    Dropout acts on non-recurrent connections only (Zaremba et al.). All linear and embedding
    weights and biases are drawn from U(-init_range, init_range); normalization gains and
    shifts keep the values their papers prescribe (see ``NormLSTM.reset_parameters``).

    The objective is the NLL summed over the BPTT window and averaged over the batch — the
    scaling of Zaremba's code, for which SGD's lr = 1 is tuned. Metrics are token-weighted:
    perplexity ``ppl`` = exp(Σ NLL / Σ tokens). ``ppl_batch_mean`` is the authors' metric from
    the same pass: the mean over batches of exp(mean over the batch of -log(p + 1e-6))
    (docs/protocols.md, "Evaluation").
    """

    selection = "ppl"
    metric_names = ("loss", "ppl", "ppl_batch_mean")

    def __init__(self, vocab_size: int, hidden_size: int = 200, num_layers: int = 2,
                 dropout: float = 0.0, init_range: float = 0.1, norm: str = "none",
                 norm_options: dict | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.rnn = NormLSTM(hidden_size, hidden_size, num_layers=num_layers, dropout=dropout,
                            norm=norm, init="uniform", init_range=init_range, **(norm_options or {}))
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.init_range = init_range
        self.chance_loss = math.log(vocab_size)  # a uniform prediction's NLL: the divergence line
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.embedding.weight, self.decoder.weight, self.decoder.bias):
            nn.init.uniform_(p, -self.init_range, self.init_range)
        self.rnn.reset_parameters()

    def forward(self, batch, state=None) -> StepOutput:
        """batch: (input, target), each (T, B) token ids; state: the NormLSTM (h, c) or None."""
        x, y = batch
        T, B = y.shape
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        logits = self.decoder(self.drop(out))  # (T, B, V)
        logp = F.log_softmax(logits.flatten(0, 1).float(), dim=-1).gather(1, y.reshape(-1, 1))
        nll = -logp.sum()
        with torch.no_grad():
            authors = (logp.exp() + AUTHORS_EPS).log().mean().neg().exp()
        return StepOutput(objective=nll / B, loss_sum=nll.detach(), count=T * B,
                          sums={"batch_ppl": authors, "batches": torch.ones((), device=y.device)},
                          state=tuple(s.detach() for s in state))

    def score(self, batch, state=None, t0: int = 0) -> StepOutput:
        """One chunk of (T, B) token streams for whole-split evaluation (``bnrnn.evaluation``):
        ``state`` carried in and out (None: zeros), ``t0`` the absolute time step of the chunk's
        first token, which indexes the per-step BN population statistics. Only the NLL and the
        token count are summed: the authors' per-batch mean has no meaning over a stream."""
        x, y = batch
        out, state = self.rnn(self.drop(self.embedding(x)), state, t0=t0)
        logits = self.decoder(self.drop(out)).flatten(0, 1)
        if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in fp32 under autocast
            logits = logits.float()
        nll = -F.log_softmax(logits, dim=-1).gather(1, y.reshape(-1, 1)).sum()
        return StepOutput(objective=nll / y.shape[1], loss_sum=nll.detach(), count=y.numel(),
                          state=tuple(s.detach() for s in state))

    @staticmethod
    def metrics(totals: dict) -> dict[str, float]:
        loss = totals["loss_sum"] / totals["count"]
        out = {"loss": loss, "ppl": math.exp(min(loss, 700.0))}
        if totals.get("batches"):
            out["ppl_batch_mean"] = totals["batch_ppl"] / totals["batches"]
        return out
