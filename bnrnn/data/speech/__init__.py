"""Framewise speech alignment data (Laurent et al. §5.1): LibriSpeech with the CPC phone
labels, and an offline corpus synthesized with libespeak-ng. Both give the trainer padded,
time-major, length-bucketed batches of 123-dim Kaldi features and frame labels."""
from bnrnn.data.speech.batching import IGNORE, SpeechData
from bnrnn.data.speech.features import FEATURE_DIM, add_deltas, fbank, num_frames
from bnrnn.data.speech.shards import Utterances

__all__ = ["IGNORE", "SpeechData", "FEATURE_DIM", "Utterances", "add_deltas", "fbank", "num_frames",
           "LibriSpeechData", "SyntheticSpeechData"]


def __getattr__(name):  # the corpora import lazily: lhotse and ctypes only when used
    if name == "LibriSpeechData":
        from bnrnn.data.speech.librispeech import LibriSpeechData

        return LibriSpeechData
    if name == "SyntheticSpeechData":
        from bnrnn.data.speech.synthetic import SyntheticSpeechData

        return SyntheticSpeechData
    raise AttributeError(name)
