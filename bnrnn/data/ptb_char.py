"""Penn Treebank, character level (Mikolov's ``ptb.char.*``), cut into fixed-length sequences.

The files hold one sentence per line, every character separated by a space and ``_`` for the
word boundary. A symbol is a space-separated character; each line adds one end-of-line symbol:
5,017,482 / 393,042 / 442,423 symbols (train / valid / test), 49 characters + end-of-line = 50
classes (``docs/reference.md`` §4). The split is the one Laurent et al. (appendix A) and
Cooijmans et al. (§5.2) use.

Batching (Laurent et al.: "predict the next characters of a fixed length sequence of 100
symbols"): each split's symbol stream is cut into non-overlapping sequences (``examples``):

- ``shifted`` (the default): sequence i reads symbols [i*L, (i+1)*L) and predicts
  [i*L + 1, (i+1)*L + 1), so every symbol but the first is predicted.
- ``disjoint`` (Cooijmans et al.'s code, ``penntreebank.py`` l. 98-101 and 359): examples of
  L + 1 symbols that share none, [i*(L+1), (i+1)*(L+1)), each predicting its last L symbols
  from its first L; the first symbol of every example is never predicted. The code's examples
  of ``--length 100`` are ``seq_len=99``.

Either way ``seq_len`` = L is the number of time steps of a sequence (T_max of its per-step BN
statistics). ``crop="random"`` (Cooijmans et al. §5.2: "for each epoch we randomly crop a
subsequence that [divides by 100]"; their code, ``penntreebank.py`` l. 85-101) starts the
training cut at an offset drawn in [0, stride) for each epoch (stride: L, or L + 1 for disjoint
examples) and keeps one sequence fewer, so every epoch has the same number of batches. Training batches shuffle the sequences with generators seeded from
(seed, epoch) — a resumed run sees the same offset and order — and drop the last incomplete
batch (a batch of one sequence has no batch statistics); evaluation never crops and keeps the
stream order and every sequence. No state is carried from one batch to the next.
``stream(split)`` is the whole split as one symbol stream (whole-stream evaluation,
``bnrnn.evaluation``), cut to what ``limit_batches`` batches hold when that is set.

``encoding``: ``bnrnn`` gives each line its characters and one end-of-line symbol.
``cooijmans`` stands for the encoding of the official code's ``char_level_penntree.npz``, which
is not public: the code reads it from ``$CHAR_LEVEL_PENNTREE_NPZ`` (``penntreebank.py`` l. 63)
with 50 classes (l. 381) and evaluates the test split as one example of 446,184 symbols
(``penntreebank_evaluate.py`` l. 78). That length is the test file's 438,662 characters plus
two symbols for each of its 3,761 lines, not one: so this encoding ends every line with the
word boundary ``_`` and then the end-of-line symbol (the word-level file's trailing " \\n"), the
same 50 classes. The count is all the code shows: that the npz put these two symbols in this
order is our inference, not something read from a file.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
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
WORD_BOUNDARY = "_"
ENCODINGS = ("bnrnn", "cooijmans")
EXAMPLES = ("shifted", "disjoint")
CROPS = ("none", "random")


class PTBCharCorpus:
    """The three char-PTB splits as 1-D LongTensors of symbol ids, one ``<eol>`` per line.

    The vocabulary is the training set's characters in sorted order after ``<eol>`` (id 0), so
    ids do not depend on the file order; valid/test characters outside it are an error.

    Args:
        root: directory holding ``ptb.char.{train,valid,test}.txt`` (config ``data.root``); when
            None the files are downloaded into ``cache_dir`` and verified by MD5.
        cache_dir: where downloads go (config ``data.cache_dir``).
        download: allow downloading when ``root`` is None and the cache is empty.
        encoding: ``bnrnn`` (characters + end-of-line per line) or ``cooijmans`` (characters,
            ``_``, end-of-line per line; see the module docstring).
    """

    files = PTB_CHAR_FILES

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb_char",
                 download: bool = True, encoding: str = "bnrnn"):
        if encoding not in ENCODINGS:
            raise ValueError(f"PTBCharCorpus: encoding must be one of {', '.join(ENCODINGS)}; "
                             f"got {encoding!r}")
        paths = {s: fetch(f, root=root, cache_dir=cache_dir, download_ok=download)
                 for s, f in self.files.items()}
        texts = {s: self.tokenize(p, encoding) for s, p in paths.items()}
        self.itos = [EOL, *sorted(set(texts["train"]) - {EOL})]
        self.vocab = {s: i for i, s in enumerate(self.itos)}
        self.splits = {s: self.encode(t, split=s) for s, t in texts.items()}

    @staticmethod
    def tokenize(path: Path, encoding: str = "bnrnn") -> list[str]:
        """The space-separated symbols of every line, then ``<eol>`` (``cooijmans``: ``_`` and
        ``<eol>``). The files end with "\\n " (Mikolov's rewrite appends " \\n "): the final
        unterminated, empty line is not a line and gets no ``<eol>``."""
        end = [WORD_BOUNDARY, EOL] if encoding == "cooijmans" else [EOL]
        symbols: list[str] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                chars = line.split()
                if chars or line.endswith("\n"):
                    symbols.extend(chars)
                    symbols.extend(end)
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


def cut_sequences(stream: torch.Tensor, seq_len: int, examples: str = "shifted", offset: int = 0,
                  count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) symbol stream -> (inputs, targets), each (S, seq_len), cut from ``stream[offset:]``.

    ``shifted``: sequence i is stream[o + i*L : o + (i+1)*L] and its target the same shifted by
    one; S = (N - 1 - o) // L. ``disjoint``: example i is stream[o + i*E : o + (i+1)*E] with
    E = L + 1, its input the first L symbols and its target the last L; S = (N - o) // E.
    ``count`` takes only the first ``count`` sequences (a random crop keeps the same number in
    every epoch). The sequences never share a target, and the tail of the stream that fills no
    whole sequence is dropped.
    """
    if examples not in EXAMPLES:
        raise ValueError(f"cut_sequences: examples must be one of {', '.join(EXAMPLES)}; got {examples!r}")
    if seq_len < 1:
        raise ValueError(f"cut_sequences: seq_len must be >= 1; got {seq_len}")
    E = stride(seq_len, examples)
    ahead = 1 if examples == "shifted" else 0  # the symbol a shifted cut predicts past its end
    S = (stream.numel() - ahead - offset) // E
    if count is not None:
        S = min(S, count)
    if S < 1:
        raise ValueError(f"cut_sequences: a stream of {stream.numel()} symbols holds no sequence "
                         f"of {seq_len} ({examples}); use a smaller data.seq_len")
    if examples == "disjoint":
        block = stream[offset: offset + S * E].view(S, E)
        return block[:, :-1], block[:, 1:]
    inputs = stream[offset: offset + S * E].view(S, E)
    targets = stream[offset + 1: offset + S * E + 1].view(S, E)
    return inputs, targets


def stride(seq_len: int, examples: str) -> int:
    """Symbols from one sequence's start to the next's: L, or L + 1 for disjoint examples."""
    return seq_len + 1 if examples == "disjoint" else seq_len


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training sequences in ``epoch``: a function of (seed, epoch) only, so
    a resumed run (or another process) draws exactly the same batches."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
    return torch.randperm(n, generator=g)


def epoch_offset(span: int, seed: int, epoch: int) -> int:
    """The random crop's start in ``epoch``, in [0, span): a function of (seed, epoch) only,
    drawn apart from the shuffle (``penntreebank.py`` l. 96: ``np.random.randint(self.length)``)."""
    state = np.random.SeedSequence([seed, epoch, 1]).generate_state(1, dtype=np.uint64)[0]
    return int(state % np.uint64(span))


class PTBCharData:
    """Char PTB for the trainer (a :class:`bnrnn.contracts.DataModule`): fixed-length sequences,
    time-major batches, no carried state.

    Batches are (input, target), each (T, B) = (seq_len, batch) symbol ids.

    Args:
        root, cache_dir, download, encoding: see :class:`PTBCharCorpus`.
        seq_len: time steps per sequence (100 in Laurent et al. and Cooijmans et al.'s text;
            99 in Cooijmans' code, whose examples of 100 symbols are ``disjoint``).
        batch_size: training sequences per batch (the grid search draws 32, 64 or 128).
        eval_batch_size: sequences per valid/test batch (the last one may be smaller).
        seed: seeds the per-epoch shuffle (and crop) together with the epoch number.
        limit_batches: use only the first N batches of every split (smoke tests, reduced grids).
        examples: ``shifted`` or ``disjoint`` (examples of L + 1 symbols; Cooijmans' code).
        crop: ``none`` or ``random`` (a new training offset per epoch).
    """

    stateful = False

    @classmethod
    def local_files(cls, data: Mapping) -> tuple[list[str], str]:
        """The files a configuration ``data`` reads from its ``root`` (or, without one, from the
        cache it names second), for ``bnrnn.config.check_data_files`` before any work."""
        return [f.name for f in PTB_CHAR_FILES.values()], "cache_dir"

    def __init__(self, root: str | None = None, cache_dir: str = "~/.cache/bnrnn/ptb_char",
                 download: bool = True, seq_len: int = 100, batch_size: int = 32,
                 eval_batch_size: int = 128, seed: int = 0, limit_batches: int | None = None,
                 encoding: str = "bnrnn", examples: str = "shifted", crop: str = "none"):
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"PTBCharData: batch_size and eval_batch_size must be >= 1; got "
                             f"{batch_size}, {eval_batch_size}")
        if limit_batches is not None and limit_batches < 1:
            raise ValueError(f"PTBCharData: limit_batches must be None or >= 1; got {limit_batches}")
        if examples not in EXAMPLES or crop not in CROPS:
            raise ValueError(f"PTBCharData: examples must be one of {', '.join(EXAMPLES)} and crop "
                             f"one of {', '.join(CROPS)}; got {examples!r}, {crop!r}")
        self.corpus = PTBCharCorpus(root, cache_dir, download, encoding)
        self.seq_len, self.seed, self.limit = seq_len, seed, limit_batches
        self.examples, self.crop = examples, crop
        self.batch_size = {"train": batch_size, "valid": eval_batch_size, "test": eval_batch_size}
        # a configuration the corpus is too small for is a ConfigError naming the key, as
        # bnrnn.config.validate_data words it (bnrnn.train reports it in one line, not as a
        # failed run); imported here, since bnrnn.config imports this module
        from bnrnn.config import ConfigError

        sizes = {s: self.corpus[s].numel() for s in ("train", "valid", "test")}
        for split, n in sizes.items():  # a sequence of L symbols needs L + 1 (its last target)
            if n - 1 < seq_len:
                raise ConfigError("data.seq_len", f"the {split} split holds {n} symbols, too few "
                                  f"for one sequence; allowed: 1 to {min(sizes.values()) - 1}", seq_len)
        self.sequences = {s: cut_sequences(self.corpus[s], seq_len, examples) for s in ("train", "valid", "test")}
        if crop == "random":  # one sequence fewer leaves room for any offset below seq_len
            n = len(self.sequences["train"][0]) - 1
            if n < 1:
                raise ConfigError("data.seq_len", "the train split holds one sequence of it, too "
                                  "few for data.crop=random (which needs two); use a smaller "
                                  "data.seq_len or data.crop=none", seq_len)
            self.sequences["train"] = tuple(t[:n] for t in self.sequences["train"])
        if (n := len(self.sequences["train"][0])) < batch_size:
            raise ConfigError("data.batch_size", f"the train split holds {n} sequences of "
                              f"data.seq_len, too few for one batch; allowed: 1 to {n}", batch_size)

    @property
    def dims(self) -> dict:
        return {"vocab_size": self.corpus.vocab_size}

    def stream(self, split: str) -> torch.Tensor:
        """The whole split as one (N,) stream of symbol ids; under ``limit_batches`` only the
        symbols its first N batches hold (+ the last target)."""
        stream = self.corpus[split]
        if self.limit:
            span = self.limit * self.batch_size[split] * stride(self.seq_len, self.examples)
            stream = stream[: span + 1]
        return stream

    def num_batches(self, split: str) -> int:
        S, B = len(self.sequences[split][0]), self.batch_size[split]
        n = S // B if split == "train" else -(-S // B)  # train drops the last partial batch
        return min(n, self.limit) if self.limit else n

    def epoch_sequences(self, split: str, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of ``split`` in ``epoch``, each (S, steps): the training cut starts
        at this epoch's offset under ``crop="random"``; every other cut is fixed."""
        if split != "train" or self.crop == "none":
            return self.sequences[split]
        offset = epoch_offset(stride(self.seq_len, self.examples), self.seed, epoch)
        return cut_sequences(self.corpus[split], self.seq_len, self.examples, offset,
                             count=len(self.sequences[split][0]))

    def batches(self, split: str, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input, target) batches, each (steps, B) int64; training order from (seed, epoch)."""
        inputs, targets = self.epoch_sequences(split, epoch)
        B = self.batch_size[split]
        order = epoch_permutation(len(inputs), self.seed, epoch) if split == "train" else None
        for i in range(self.num_batches(split)):
            if order is None:
                idx = slice(i * B, (i + 1) * B)
            else:
                idx = order[i * B : (i + 1) * B]
            yield inputs[idx].t().contiguous(), targets[idx].t().contiguous()  # (S, T) -> (T, B)
