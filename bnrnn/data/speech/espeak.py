"""libespeak-ng through ctypes: synthesized speech with an exact phoneme alignment.

eSpeak NG reports, in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with ``espeakINITIALIZE_PHONEME_EVENTS``,
an ``espeakEVENT_PHONEME`` event for every phoneme it speaks, with the phoneme's mnemonic and
its start in the audio (``audio_position``, ms). Consecutive starts tile the waveform, which
gives a frame-level phoneme alignment with no aligner in the loop (``docs/reference.md`` §5; the
calls are those of espeak-ng's public C header ``speak_lib.h``).

Facts that shape the code (measured with Debian's espeak-ng 1.51):
- the library keeps global state: one :class:`ESpeak` per process, processes (not threads)
  to parallelize;
- a fresh process reproduces a fixed sequence of calls exactly, but the same process is not
  bit-reproducible across repeated calls, and ``espeak_Terminate`` followed by a new
  ``espeak_Initialize`` hangs: a deterministic corpus therefore builds every shard in a fresh
  process (``bnrnn.data.speech.shards.build``);
- synthesis runs at ~900x real time per process; native rate 22,050 Hz, resampled here to
  16 kHz (``scipy.signal.resample_poly``, deterministic) for the Kaldi features.

Which library: the ``espeakng-loader`` wheel (``[speech]`` extra) bundles libespeak-ng 1.52.0 and
its data, so every machine with the same wheel speaks the same corpus and the library travels
where no system package can be installed; the system's libespeak-ng (Debian's 1.51) is the
other choice (:func:`find_library`). The version is part of the corpus's cache key.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from dataclasses import dataclass
from math import gcd

import numpy as np

from bnrnn.data.download import DataError
from bnrnn.data.speech.features import FRAME_LENGTH, FRAME_SHIFT, SAMPLE_RATE, num_frames

# ---- constants of espeak-ng/speak_lib.h (espeak-ng 1.51) ------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
espeakINITIALIZE_PHONEME_EVENTS = 0x0001
espeakINITIALIZE_DONT_EXIT = 0x8000
EV_LIST_TERMINATED, EV_WORD, EV_SENTENCE, EV_MARK, EV_PLAY, EV_END, EV_MSG_TERMINATED, EV_PHONEME = range(8)
POS_CHARACTER = 1
espeakCHARS_UTF8 = 1
espeakENDPAUSE = 0x1000
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4

INSTALL_HINT = ("install it with `apt-get install espeak-ng` (Debian/Ubuntu; the package brings "
                "libespeak-ng1 and espeak-ng-data), `dnf install espeak-ng` or `brew install espeak-ng`")

# ---- the class inventory ---------------------------------------------------------------------
SILENCE = "sil"
# Every phoneme mnemonic that the five English voices below emit as a phoneme event with a
# duration, in eSpeak's ASCII notation (espeak-ng 1.51): 74 symbols, measured by speaking
# 47,500 PTB training sentences (8,000 random ones per voice at random rates 110-260 wpm and
# pitches 20-80, with PTB's N as numbers, plus the first 1,500 per voice at 175 wpm) and
# collecting the events. The rarest ('x', 30 times) was first seen after 8,000 sentences, so a
# long corpus may meet one more: class_of() then stops with a clear error. All are entries of
# the English phoneme tables (en, en-us, en-rp, en-sc, en-wi) of espeak-ng-data/phontab.
# Pause events ("_", "_:", "_!": mnemonics starting with "_") are the silence class.
# Order is fixed: class index = position in PHONEME_CLASSES (0 = silence).
PHONEMES = (
    # vowels and diphthongs
    "@", "@-", "@2", "@5", "@L", "3", "3:", "0", "A:", "A@", "E", "I", "I#", "I2", "IR", "O",
    "O2", "O:", "O@", "OI", "U", "U@", "V", "VR", "a", "a#", "aI", "aI2", "aI3", "aI@", "aU",
    "aa", "e@", "eI", "i", "i:", "i@", "i@3", "o@", "oU", "u:",
    # consonants
    "?", ";", "D", "N", "S", "T", "Z", "b", "d", "dZ", "f", "g", "h", "j", "k", "l", "m", "n",
    "n-", "p", "r", "r-", "s", "t", "t#", "t2", "t[", "tS", "v", "w", "w#", "x", "z",
)
PHONEME_CLASSES = (SILENCE, *PHONEMES)
CLASS_INDEX = {p: i for i, p in enumerate(PHONEME_CLASSES)}

# Voices (espeak-ng voice file names) and variants (+m1..+m7, +f1..+f5; "" = the voice's own).
VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


# eSpeak's stress marks (primary ', secondary ,). espeak-ng 1.52 writes them in front of a stressed
# vowel's mnemonic in phoneme events ("'V", ",E"), 1.51 does not. Stress is not a class here, so
# they are dropped: measured on 1,500 PTB sentences over the five voices, 1.52's events then use
# exactly the 1.51 inventory below (tests/test_speech_synthetic.py holds a sample of them).
STRESS_MARKS = "',"


def class_of(mnemonic: str) -> int:
    """Class index of an eSpeak phoneme mnemonic (stress marks dropped); pauses ("_", "_:",
    "_!", ...) are silence."""
    mnemonic = mnemonic.lstrip(STRESS_MARKS)
    if mnemonic.startswith("_") or mnemonic == "":
        return 0
    try:
        return CLASS_INDEX[mnemonic]
    except KeyError:
        raise DataError(
            f"eSpeak emitted phoneme {mnemonic!r}, which is not in bnrnn's inventory "
            f"(bnrnn.data.speech.espeak.PHONEMES, {len(PHONEMES)} symbols measured with "
            f"espeak-ng 1.51 and the voices {', '.join(VOICES)}). A different espeak-ng version "
            f"or voice list can emit new symbols: add it to PHONEMES (this changes the corpus "
            f"and the number of classes).") from None


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesized message
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


LIBRARIES = ("auto", "bundled", "system")
BUNDLED_HINT = "pip install espeakng-loader (the pinned wheel in bnrnn's [speech] extra)"


@dataclass(frozen=True)
class Library:
    """Where libespeak-ng is: the shared object, its data folder (None: the library's own
    default) and which of :data:`LIBRARIES` it came from."""

    path: str
    data_path: str | None
    source: str


def find_library(which: str = "auto") -> Library:
    """``bundled``: the espeakng-loader wheel; ``system``: the system's libespeak-ng; ``auto``:
    the wheel where it is installed, else the system library. A :class:`DataError` says how to
    install the one asked for."""
    if which not in LIBRARIES:
        raise ValueError(f"espeak library must be one of {', '.join(LIBRARIES)}; got {which!r}")
    if which in ("auto", "bundled"):
        try:
            import espeakng_loader
        except ImportError:
            if which == "bundled":
                raise DataError(f"espeak library 'bundled' needs the espeakng-loader wheel: "
                                f"{BUNDLED_HINT}; or use the system library (library=system)") from None
        else:
            return Library(espeakng_loader.get_library_path(), espeakng_loader.get_data_path(), "bundled")
    return Library(_system_path(), None, "system")


def _system_path() -> str:
    """The system libespeak-ng as a file path where the loader's cache names one. On Linux
    ``ctypes.util.find_library`` gives only the soname, and ``dlopen`` of a bare soname returns
    any library already loaded under it — the bundled wheel's, which shares the soname."""
    name = ctypes.util.find_library("espeak-ng")
    if name is None or os.path.isabs(name):  # not found, or a path already (macOS)
        return name or "libespeak-ng.so.1"  # load_library's error then says how to install it
    for ldconfig in ("/sbin/ldconfig", "ldconfig"):
        try:
            cache = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            continue
        # lines "\tlibespeak-ng.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libespeak-ng.so.1";
        # a multiarch system may list several: the first one this process can load is taken
        paths = [line.partition(" => ")[2].strip() for line in cache.splitlines()
                 if line.strip().startswith(name + " ")]
        for path in paths:
            try:
                ctypes.CDLL(path)
            except OSError:
                continue
            return path
    return name


def load_library(which: str = "auto") -> tuple[ctypes.CDLL, Library]:
    """The libespeak-ng shared library, or a :class:`DataError` that says how to install it."""
    found = find_library(which)
    try:
        lib = ctypes.CDLL(found.path)
    except OSError as e:
        raise DataError(f"libespeak-ng is not installed ({e}); the synthetic speech corpus "
                        f"(data=synthetic_speech) needs it: {BUNDLED_HINT}, or {INSTALL_HINT}.") from None
    if found.source == "system" and _is_bundled(lib):
        # the corpus's cache key would name the wrong library's version
        raise DataError("libespeak-ng (library=system) resolved to the bundled espeakng-loader "
                        f"library already loaded in this process, not a system one: {INSTALL_HINT}, "
                        "or use library=bundled.")
    return lib, found


def _is_bundled(lib: ctypes.CDLL) -> bool:
    """Whether ``lib`` is the espeakng-loader wheel's library (the same handle: ``dlopen``
    returns the handle of an object already loaded)."""
    try:
        import espeakng_loader
    except ImportError:
        return False
    return ctypes.CDLL(espeakng_loader.get_library_path())._handle == lib._handle


def library_version(which: str = "auto") -> str:
    """The libespeak-ng version string (part of the synthetic corpus's cache key)."""
    lib, _ = load_library(which)
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    return lib.espeak_Info(None).decode()


@dataclass(frozen=True)
class Segment:
    phone: str  # eSpeak mnemonic; "_" for the leading silence
    start_ms: int
    end_ms: int


class ESpeak:
    """The synthesizer of this process (one per process: libespeak-ng has global state)."""

    def __init__(self, library: str = "auto"):
        self.lib, found = load_library(library)
        lib, data_path = self.lib, found.data_path
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        options = espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_DONT_EXIT
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                                 data_path.encode() if data_path else None, options)
        if self.sample_rate <= 0:
            raise DataError(f"espeak_Initialize failed ({self.sample_rate}): is espeak-ng-data "
                            f"installed? {INSTALL_HINT}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._callback_ref = _CALLBACK(self._callback)  # keep a reference: ctypes must not free it
        lib.espeak_SetSynthCallback(self._callback_ref)

    def _callback(self, wav, n, events):
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != EV_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EV_PHONEME:
                self._events.append((ev.type, ev.audio_position,
                                     ev.id.string.decode("utf-8", "replace") or "_"))
            i += 1
        return 0

    def set_voice(self, voice: str = "en-us", variant: str = "", rate: int = 175,
                  pitch: int = 50, pitch_range: int = 50) -> None:
        """voice: an espeak-ng voice file name (``VOICES``); variant: "" or ``VARIANTS``;
        rate: words per minute (80-450); pitch, pitch_range: 0-100."""
        name = voice + (f"+{variant}" if variant else "")
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"ESpeak.set_voice: unknown voice {name!r}; try one of {VOICES} with "
                             f"a variant from {VARIANTS[1:]}")
        for param, value in ((espeakRATE, rate), (espeakPITCH, pitch), (espeakRANGE, pitch_range)):
            if self.lib.espeak_SetParameter(param, int(value), 0) != 0:
                raise ValueError(f"ESpeak.set_voice: parameter {param} = {value} was refused")

    def synth(self, text: str) -> tuple[np.ndarray, list[Segment]]:
        """-> (waveform (n,) int16 at ``self.sample_rate``, phoneme segments tiling it in ms)."""
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0,
                                    espeakCHARS_UTF8 | espeakENDPAUSE, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with error {err} on {text[:60]!r}")
        self.lib.espeak_Synchronize()
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        total_ms = int(round(1000 * len(wav) / self.sample_rate))
        starts = [(t, p) for _, t, p in self._events]
        segments = []
        for k, (t, p) in enumerate(starts):
            end = starts[k + 1][0] if k + 1 < len(starts) else total_ms
            if end > t:  # zero-length events (stress and boundary markers) are dropped
                segments.append(Segment(p, t, end))
        if segments and segments[0].start_ms > 0:  # silence before the first phoneme event
            segments.insert(0, Segment("_", 0, segments[0].start_ms))
        return wav, segments


def resample_to_16k(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 waveform at ``sample_rate`` -> float32 at 16 kHz, still in int16 units."""
    from scipy.signal import resample_poly

    g = gcd(SAMPLE_RATE, sample_rate)
    return resample_poly(wav.astype(np.float64), SAMPLE_RATE // g, sample_rate // g).astype(np.float32)


def frame_labels(segments: list[Segment], num_samples: int) -> np.ndarray:
    """Class per Kaldi frame (T = num_frames(num_samples) at 16 kHz): the phoneme active at the
    centre of frame t, i.e. at sample 160 t + 200 (= 10 t + 12.5 ms)."""
    T = num_frames(num_samples)
    if not segments:
        raise ValueError("frame_labels: no phoneme segments (empty text?)")
    starts = np.array([s.start_ms for s in segments], dtype=np.float64)
    classes = np.array([class_of(s.phone) for s in segments], dtype=np.int16)
    centres_ms = (np.arange(T) * FRAME_SHIFT + FRAME_LENGTH / 2) * 1000.0 / SAMPLE_RATE
    idx = np.clip(np.searchsorted(starts, centres_ms, side="right") - 1, 0, len(segments) - 1)
    return classes[idx]
