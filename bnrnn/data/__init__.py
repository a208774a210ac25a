"""Datasets: word- and character-level Penn Treebank, framewise speech (``bnrnn.data.speech``)."""
from bnrnn.data.download import DataError, RemoteFile, fetch
from bnrnn.data.ptb import PTBCorpus, batchify, bptt_windows

__all__ = ["DataError", "RemoteFile", "fetch", "PTBCorpus", "batchify", "bptt_windows"]
