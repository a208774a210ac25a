"""Kaldi features: the framing that matches the CPC labels, the filterbank against an
independent implementation, the deltas against Kaldi's formula written out."""
import numpy as np
import pytest
import soundfile as sf

from bnrnn.data.speech.features import FEATURE_DIM, STATIC_DIM, add_deltas, fbank, num_frames

UTTERANCES = {"2911-12359-0007": 508, "4051-11218-0044": 1119}  # label counts of the fixture


def flac(sample, uid):
    spk, chapter, _ = uid.split("-")
    wav, sr = sf.read(sample / "test_db" / spk / chapter / f"{uid}.flac",
                      dtype="int16")
    return wav.astype(np.float32), sr


@pytest.mark.parametrize("n, frames", [(0, 0), (399, 0), (400, 1), (559, 1), (560, 2), (81520, 508),
                                       (179360, 1119)])
def test_kaldi_frame_count(n, frames):
    assert num_frames(n) == frames
    if n:
        assert fbank(np.zeros(n, np.float32) + 1.0).shape == (frames, STATIC_DIM)


@pytest.mark.parametrize("uid", sorted(UTTERANCES))
def test_fixture_frames_match_label_counts(librispeech_sample, uid):
    wav, sr = flac(librispeech_sample, uid)
    assert fbank(wav, sr).shape == (UTTERANCES[uid], STATIC_DIM)


@pytest.mark.filterwarnings("ignore:.*snip_edges:UserWarning", "ignore::DeprecationWarning")
def test_fbank_equals_lhotse_kaldi_implementation(librispeech_sample):
    """kaldi-native-fbank (C++) against lhotse's torch port of Kaldi's compute-fbank-feats."""
    pytest.importorskip("lhotse")
    from lhotse.features.kaldi.extractors import Fbank, FbankConfig

    wav, sr = flac(librispeech_sample, "2911-12359-0007")
    ours = fbank(wav, sr)
    config = FbankConfig(num_filters=40, use_energy=True, dither=0.0, snip_edges=True,
                         high_freq=0.0, energy_floor=0.0)  # Kaldi's defaults
    reference = Fbank(config).extract(wav, sr)
    assert reference.shape == ours.shape
    np.testing.assert_allclose(ours, reference, atol=2e-3, rtol=1e-4)
    assert ours[:, 0].std() > 1.0  # energy varies: not a constant column


def kaldi_deltas(x, window=2, order=2):
    """Kaldi's DeltaFeatures written out: the order-i block is Σ_j w_i[j] x_{clamp(t+j)}, where
    w_1[j] = j / (2 Σ_k k²) for j in [-window, window] and w_i = w_{i-1} * w_1 (convolution);
    frames outside the utterance are its first/last frame."""
    T = len(x)
    w1 = np.arange(-window, window + 1) / (2 * sum(k * k for k in range(1, window + 1)))
    blocks, w = [x], np.array([1.0])
    for _ in range(order):
        w = np.convolve(w, w1)
        half = len(w) // 2
        blocks.append(sum(w[j + half] * x[np.clip(np.arange(T) + j, 0, T - 1)]
                          for j in range(-half, half + 1)))
    return np.concatenate(blocks, axis=1)


def test_deltas_equal_kaldi_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(17, STATIC_DIM)).astype(np.float32)
    out = add_deltas(x)
    assert out.shape == (17, FEATURE_DIM)
    np.testing.assert_allclose(out, kaldi_deltas(x.astype(np.float64)), atol=1e-5)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="16000"):
        fbank(np.zeros(1000, np.float32), 22050)
    with pytest.raises(ValueError, match="mono"):
        fbank(np.zeros((1000, 2), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        add_deltas(np.zeros((0, STATIC_DIM), np.float32))
