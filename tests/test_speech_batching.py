"""Length-bucketed, padded, time-major batches and the engine's data protocol."""
import logging

import numpy as np
import pytest
import torch

from bnrnn.data.speech.batching import (IGNORE, SpeechData, bucket_batches, collate,
                                        feature_statistics)
from bnrnn.data.speech.features import add_deltas
from bnrnn.data.speech.shards import Utterances, read_shard, write_shard


def utterances(lengths, seed=0, classes=5):
    rng = np.random.default_rng(seed)
    feats = [rng.normal(size=(n, 41)).astype(np.float32) for n in lengths]
    labels = [rng.integers(0, classes, n).astype(np.int16) for n in lengths]
    return Utterances.packed([f"u{i}" for i in range(len(lengths))],
                             torch.tensor(lengths, dtype=torch.int64),
                             torch.from_numpy(np.concatenate(feats)),
                             torch.from_numpy(np.concatenate(labels)))


def test_bucket_batches_cover_every_utterance_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 1300, 1000)
    batches = bucket_batches(lengths, 24, np.random.default_rng(1), sort_pool=50)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert max(len(b) for b in batches) == 24
    padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches) / lengths.sum()
    random_padding = sum(24 * lengths[b].max() - lengths[b].sum()
                         for b in np.array_split(rng.permutation(1000), 42)) / lengths.sum()
    assert padding < 0.05 < random_padding  # bucketing removes most of the padding


def test_epoch_plans_are_seeded():
    data = SpeechData({"train": utterances(range(20, 120, 2)), "dev": utterances([30, 10, 20])},
                      num_classes=5, batch_size=4, eval_batch_size=2, sort_pool=2)
    assert [b.tolist() for b in data.plan("train", 3)] == [b.tolist() for b in data.plan("train", 3)]
    assert [b.tolist() for b in data.plan("train", 3)] != [b.tolist() for b in data.plan("train", 4)]
    assert [b.tolist() for b in data.plan("dev", 7)] == [[1, 2], [0]]  # sorted by length, fixed
    assert data.num_batches("train") == 13 and data.stateful is False


def test_collate_pads_time_major():
    utts = utterances([5, 3])
    features, lengths, labels = collate([utts[0], utts[1]])
    assert features.shape == (5, 2, 123) and features.dtype == torch.float32
    assert lengths.tolist() == [5, 3] and lengths.dtype == torch.int64
    assert labels.dtype == torch.int64 and labels[3:, 1].tolist() == [IGNORE, IGNORE]
    assert features[3:, 1].abs().sum() == 0
    np.testing.assert_allclose(features[:3, 1].numpy(), add_deltas(utts[1][0].numpy()))
    assert labels[:3, 1].tolist() == utts[1][1].tolist()


def test_pad_multiple_fixes_the_batch_lengths_and_only_adds_padding():
    """Rounded-up T: few distinct batch shapes (CUDA graphs replay); the real frames, lengths
    and labels are those of the unrounded batch (test_speech_model: more padding changes nothing)."""
    utts = utterances([5, 3, 12, 7, 9, 2, 11])
    plain = SpeechData({"train": utts}, num_classes=5, batch_size=2, max_frames=None)
    fixed = SpeechData({"train": utts}, num_classes=5, batch_size=2, max_frames=None, pad_multiple=4)
    shapes = set()
    for (f0, l0, y0), (f1, l1, y1) in zip(plain.batches("train", 1), fixed.batches("train", 1)):
        T = f0.shape[0]
        assert f1.shape[0] % 4 == 0 and T <= f1.shape[0] < T + 4
        assert torch.equal(l0, l1) and torch.equal(f1[:T], f0) and torch.equal(y1[:T], y0)
        assert f1[T:].abs().sum() == 0 and (y1[T:] == IGNORE).all()
        shapes.add(f1.shape[0])
    assert shapes <= {4, 8, 12}
    with pytest.raises(ValueError, match="pad_multiple must be >= 1"):
        SpeechData({"train": utts}, num_classes=5, pad_multiple=0)


def test_long_training_utterances_are_dropped_and_counted(caplog):
    caplog.set_level(logging.INFO, logger="bnrnn")
    data = SpeechData({"train": utterances([10, 40, 20, 41]), "dev": utterances([50])},
                      num_classes=5, max_frames=40, batch_size=2)
    assert data.dropped_long == 1 and sorted(data.splits["train"].ids) == ["u0", "u1", "u2"]
    assert len(data.splits["dev"]) == 1  # dev keeps its long utterance (the paper drops train only)
    assert "dropped 1 of 4 training utterances longer than 40 frames" in caplog.text


def test_feature_statistics_over_all_frames():
    utts = utterances([7, 4, 9])
    mean, std = feature_statistics(utts)
    every = np.concatenate([add_deltas(utts[i][0].numpy()) for i in range(3)]).astype(np.float64)
    np.testing.assert_allclose(mean, every.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, every.std(0), rtol=1e-5)
    data = SpeechData({"train": utts}, num_classes=5)
    assert data.dims["feature_mean"] == pytest.approx(mean.tolist())


def test_shard_round_trip_and_select(tmp_path):
    utts = utterances([5, 8, 3])
    entry = write_shard(tmp_path / "a.pt", utts.ids, [utts[i][0].numpy() for i in range(3)],
                        [utts[i][1].numpy() for i in range(3)])
    assert entry["frames"] == 16 and entry["utterances"] == 3
    back = read_shard(tmp_path / "a.pt")
    assert torch.equal(back.frames()[0], utts.frames()[0]) and back.ids == utts.ids
    picked = back.select([2, 0])
    assert picked.ids == ["u2", "u0"] and torch.equal(picked[0][1], utts[2][1])


def test_bad_data_is_a_clear_error():
    with pytest.raises(ValueError, match="'train' split is required"):
        SpeechData({"dev": utterances([3])}, num_classes=5)
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\)"):
        SpeechData({"train": utterances([30], classes=5)}, num_classes=3)
    data = SpeechData({"train": utterances([3])}, num_classes=5)
    with pytest.raises(KeyError, match="no split 'dev'"):
        data.num_batches("dev")
