"""Kaldi filterbank features: 40 log-mel bands + energy, with Δ and ΔΔ (123 dims).

Framing is Kaldi's default (25 ms window, 10 ms shift, ``snip_edges``), so an utterance of
``n`` samples at 16 kHz has ``T = (n - 400) // 160 + 1`` frames and frame ``t`` covers samples
``[160 t, 160 t + 400)``: the framing of the CPC LibriSpeech phone labels (``docs/reference.md`` §5).

The DSP is kaldi-native-fbank's (the C++ port of Kaldi's ``compute-fbank-feats`` and
``add-deltas``); ``tests/test_speech_features.py`` holds it against lhotse's independent torch
implementation of Kaldi's filterbank and against the Kaldi delta formula written out.

Waveforms are in 16-bit integer units (Kaldi reads PCM without rescaling), dither is off so
features are deterministic. Caches store the 41 static dimensions; :func:`add_deltas` expands
them to 123 when a batch is built (a third of the storage, and deltas cost microseconds).
"""
from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # samples: 25 ms
FRAME_SHIFT = 160  # samples: 10 ms
NUM_MEL_BINS = 40
STATIC_DIM = NUM_MEL_BINS + 1  # log energy first (Kaldi's order when htk_compat=false)
DELTA_ORDER = 2
DELTA_WINDOW = 2
FEATURE_DIM = STATIC_DIM * (DELTA_ORDER + 1)  # 123

# Everything that changes the numbers: part of every feature cache's key.
FEATURE_CONFIG = {
    "library": f"kaldi-native-fbank {knf.__version__}",
    "sample_rate": SAMPLE_RATE,
    "frame_length": FRAME_LENGTH,
    "frame_shift": FRAME_SHIFT,
    "snip_edges": True,
    "dither": 0.0,
    "num_mel_bins": NUM_MEL_BINS,
    "use_energy": True,
    "waveform_scale": "int16",
    "delta_order": DELTA_ORDER,
    "delta_window": DELTA_WINDOW,
}


def num_frames(num_samples: int) -> int:
    """Kaldi's frame count with snip_edges: ``(n - 400) // 160 + 1`` (0 below one window)."""
    return 0 if num_samples < FRAME_LENGTH else (num_samples - FRAME_LENGTH) // FRAME_SHIFT + 1


def fbank_options() -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = 1000 * FRAME_LENGTH / SAMPLE_RATE
    opts.frame_opts.frame_shift_ms = 1000 * FRAME_SHIFT / SAMPLE_RATE
    opts.frame_opts.snip_edges = True
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.use_energy = True
    return opts


def fbank(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """waveform (n,) in int16 units at 16 kHz -> static features (T, 41) float32.

    Column 0 is the log energy, columns 1..40 the log-mel bands; ``T = num_frames(n)``.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"fbank: sample_rate must be {SAMPLE_RATE} Hz; got {sample_rate} "
                         f"(resample the audio first)")
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"fbank: waveform must be 1-D (mono); got shape {waveform.shape}")
    extractor = knf.OnlineFbank(fbank_options())
    extractor.accept_waveform(SAMPLE_RATE, waveform)
    extractor.input_finished()
    n = extractor.num_frames_ready
    out = np.empty((n, STATIC_DIM), dtype=np.float32)
    for t in range(n):
        out[t] = extractor.get_frame(t)
    return out


_DELTA_OPTIONS = knf.DeltaOptions()
_DELTA_OPTIONS.order = DELTA_ORDER
_DELTA_OPTIONS.window = DELTA_WINDOW


def add_deltas(static: np.ndarray) -> np.ndarray:
    """static (T, 41) -> (T, 123): [x, Δx, ΔΔx], Kaldi ``add-deltas`` (window 2, edges replicated)."""
    static = np.ascontiguousarray(static, dtype=np.float32)
    if static.ndim != 2 or static.shape[0] == 0:
        raise ValueError(f"add_deltas: expected a non-empty (T, F) array; got shape {static.shape}")
    return knf.compute_deltas(_DELTA_OPTIONS, static)
