"""Penn Treebank, character level (Mikolov's ``ptb.char.*``), cut into fixed-length sequences.

The files hold one sentence per line, every character separated by a space and ``_`` for the
word boundary. A symbol is a space-separated character; each line adds one end-of-line symbol:
5,017,482 / 393,042 / 442,423 symbols (train / valid / test), 49 characters + end-of-line = 50
classes (``docs/reference.md`` §4). The split is the one Laurent et al. (appendix A) and
Cooijmans et al. (§5.2) use.

Batching (Laurent et al.: "predict the next characters of a fixed length sequence of 100
symbols"): each split's symbol stream is cut into non-overlapping sequences; sequence i reads
symbols [i*L, (i+1)*L) and predicts [i*L + 1, (i+1)*L + 1). Training batches shuffle the
sequences with a generator seeded from (seed, epoch) — a resumed run sees the same order — and
drop the last incomplete batch (a batch of one sequence has no batch statistics); evaluation
keeps the stream order and every sequence. No state is carried from one batch to the next.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bnrnn.data.download import RemoteFile, fetch

# The only public copies of the three files (Mikolov's simple-examples, committed verbatim);
# no loader records a checksum for them, so the MD5s are those of copies whose git blob ids
# equal the files' ids in those repositories' trees (the same bytes); the full_data test in
# tests/test_data_ptb_char.py checks them against a local copy.
_URL = ("https://raw.githubusercontent.com/townie/PTB-dataset-from-Tomas-Mikolov-s-webpage/"
        "master/data/")
PTB_CHAR_FILES = {
    "train": RemoteFile("ptb.char.train.txt", _URL + "ptb.char.train.txt",
                        "874909f99060142f6b88cc74c34baaa2"),
    "valid": RemoteFile("ptb.char.valid.txt", _URL + "ptb.char.valid.txt",
                        "9e0fe5bec2a8bf43fd686dc23d5ab8bb"),
    "test": RemoteFile("ptb.char.test.txt", _URL + "ptb.char.test.txt",
                       "1f9a2d1afe00f76e8bfbe09a65439681"),
}
EOL = "<eol>"


class PTBCharCorpus:
    """The three char-PTB splits as 1-D LongTensors of symbol ids, one ``<eol>`` per line.

    The vocabulary is the training set's characters in sorted order after ``<eol>`` (id 0), so
    ids do not depend on the file order; valid/test characters outside it are an error.

    Args:
        root: directory holding ``ptb.char.{train,valid,test}.txt`` (config ``data.root``); when
            None the files are downloaded into ``cache_dir`` and verified by MD5.
        cache_dir: where downloads go (config ``data.cache_dir``).
        download: allow downloading when ``root`` is None and the cache is empty.
    """

    files = PTB_CHAR_FILES

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb_char",
                 download: bool = True):
        paths = {s: fetch(f, root=root, cache_dir=cache_dir, download_ok=download)
                 for s, f in self.files.items()}
        texts = {s: self.tokenize(p) for s, p in paths.items()}
        self.itos = [EOL, *sorted(set(texts["train"]) - {EOL})]
        self.vocab = {s: i for i, s in enumerate(self.itos)}
        self.splits = {s: self.encode(t, split=s) for s, t in texts.items()}

    @staticmethod
    def tokenize(path: Path) -> list[str]:
        """The space-separated symbols of every line, then ``<eol>``. The files end with
        "\\n " (Mikolov's rewrite appends " \\n "): the final unterminated, empty line is not a
        line and gets no ``<eol>``."""
        symbols: list[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                chars = line.split()
                if chars or line.endswith("\n"):
                    symbols.extend(chars)
                    symbols.append(EOL)
        return symbols

    def encode(self, symbols: list[str], split: str) -> torch.Tensor:
        try:
            return torch.tensor([self.vocab[s] for s in symbols], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"PTBCharCorpus: symbol {e.args[0]!r} of the {split} split is not in "
                             f"the training set's characters; are these the canonical "
                             f"ptb.char.*.txt files?") from None

    def __getitem__(self, split: str) -> torch.Tensor:
        return self.splits[split]

    @property
    def vocab_size(self) -> int:
        return len(self.itos)


def cut_sequences(stream: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) symbol stream -> (inputs, targets), each (S, seq_len) with S = (N - 1) // seq_len.

    Sequence i is stream[i*L : (i+1)*L] and its target stream[i*L + 1 : (i+1)*L + 1]: the
    sequences do not overlap, so each symbol but the first is predicted at most once; the last
    (N - 1) mod L predictions of the stream are dropped.
    """
    if seq_len < 1:
        raise ValueError(f"cut_sequences: seq_len must be >= 1; got {seq_len}")
    S = (stream.numel() - 1) // seq_len
    if S < 1:
        raise ValueError(f"cut_sequences: a stream of {stream.numel()} symbols holds no sequence "
                         f"of {seq_len} (+1 target); use a smaller data.seq_len")
    inputs = stream[: S * seq_len].view(S, seq_len)
    targets = stream[1 : S * seq_len + 1].view(S, seq_len)
    return inputs, targets


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training sequences in ``epoch``: a function of (seed, epoch) only, so
    a resumed run (or another process) draws exactly the same batches."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
    return torch.randperm(n, generator=g)


class PTBCharData:
    """Char PTB for the trainer (a :class:`bnrnn.contracts.DataModule`): fixed-length sequences,
    time-major batches, no carried state.

    Batches are (input, target), each (T, B) = (seq_len, batch) symbol ids.

    Args:
        root, cache_dir, download: see :class:`PTBCharCorpus`.
        seq_len: symbols per sequence (100 in Laurent et al. and Cooijmans et al.).
        batch_size: training sequences per batch (the grid search draws 32, 64 or 128).
        eval_batch_size: sequences per valid/test batch (the last one may be smaller).
        seed: seeds the per-epoch shuffle together with the epoch number.
        limit_batches: use only the first N batches of every split (smoke tests, reduced grids).
    """

    stateful = False

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb_char",
                 download: bool = True, seq_len: int = 100, batch_size: int = 32,
                 eval_batch_size: int = 128, seed: int = 0, limit_batches: int | None = None):
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"PTBCharData: batch_size and eval_batch_size must be >= 1; got "
                             f"{batch_size}, {eval_batch_size}")
        if limit_batches is not None and limit_batches < 1:
            raise ValueError(f"PTBCharData: limit_batches must be None or >= 1; got {limit_batches}")
        self.corpus = PTBCharCorpus(root, cache_dir, download)
        self.seq_len, self.seed, self.limit = seq_len, seed, limit_batches
        self.batch_size = {"train": batch_size, "valid": eval_batch_size, "test": eval_batch_size}
        self.sequences = {s: cut_sequences(self.corpus[s], seq_len) for s in ("train", "valid", "test")}
        if len(self.sequences["train"][0]) < batch_size:
            raise ValueError(f"PTBCharData: the training set holds {len(self.sequences['train'][0])} "
                             f"sequences of {seq_len}, fewer than batch_size={batch_size}")

    @property
    def dims(self) -> dict:
        return {"vocab_size": self.corpus.vocab_size}

    def num_batches(self, split: str) -> int:
        S, B = len(self.sequences[split][0]), self.batch_size[split]
        n = S // B if split == "train" else -(-S // B)  # train drops the last partial batch
        return min(n, self.limit) if self.limit else n

    def batches(self, split: str, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input, target) batches, each (seq_len, B) int64; training order from (seed, epoch)."""
        inputs, targets = self.sequences[split]
        B = self.batch_size[split]
        order = epoch_permutation(len(inputs), self.seed, epoch) if split == "train" else None
        for i in range(self.num_batches(split)):
            if order is None:
                idx = slice(i * B, (i + 1) * B)
            else:
                idx = order[i * B : (i + 1) * B]
            yield inputs[idx].t().contiguous(), targets[idx].t().contiguous()  # (S, T) -> (T, B)
