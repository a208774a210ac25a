"""Framewise speech alignment data (Laurent et al. §5.1): LibriSpeech with the CPC phone
labels, and an offline corpus synthesized with libespeak-ng. Both give the trainer padded,
time-major, length-bucketed batches of 123-dim Kaldi features and frame labels.

They need the ``[speech]`` extra; without it, importing this package says which module is
missing and how to install it, before any corpus work starts."""
import importlib.util

# module -> the distribution that provides it (pyproject.toml's [speech] extra)
_SPEECH_MODULES = {"kaldi_native_fbank": "kaldi-native-fbank", "lhotse": "lhotse",
                   "soundfile": "soundfile", "scipy": "scipy",
                   "datasets": "datasets"}
_missing = [dist for module, dist in _SPEECH_MODULES.items() if importlib.util.find_spec(module) is None]
if _missing:
    raise ImportError(f"bnrnn.data.speech needs the speech extra, missing here: {', '.join(_missing)}; "
                      f"install it with: pip install 'bnrnn[speech]' (or pip install {' '.join(_missing)})")

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
