"""The speech feature cache (bnrnn/data/speech/shards.py): Arrow splits round-trip exactly, open
as memory maps (no copy), are byte-identical across builds, refuse damaged files with the fix,
and survive an interrupted build; format-1 caches are converted or refused clearly."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bnrnn.data.download import DataError
from bnrnn.data.speech import shards
from bnrnn.data.speech.shards import ShardJob, Utterances, build, load_manifest, load_splits, write_shard

CONFIG = {"corpus": "test", "seed": 3}
PLAN = {("train", 0): (1, [5, 17, 9]), ("train", 1): (2, [30, 1]), ("dev", 0): (3, [12])}


def fake_utterances(seed: int, lengths: list[int]):
    """Deterministic random utterances: ids, feats (T, 41) float32, labels (T,) int16."""
    rng = np.random.default_rng(seed)
    ids = [f"s{seed}-{i}" for i in range(len(lengths))]
    feats = [rng.normal(size=(n, 41)).astype(np.float32) for n in lengths]
    labels = [rng.integers(0, 75, n).astype(np.int16) for n in lengths]
    return ids, feats, labels


def fake_worker(payload, out_path: str) -> dict:
    """A shard worker without eSpeak ("fail": an interrupted shard; "poison": must not run)."""
    if payload in ("fail", "poison"):
        raise RuntimeError(f"worker ran a {payload} job")
    return write_shard(out_path, *fake_utterances(*payload)) | {"seconds": 1.5}


def jobs(**replace):
    return [ShardJob(split, i, replace.get(f"{split}{i}", payload)) for (split, i), payload in PLAN.items()]


def corpus_dir(root: Path) -> Path:
    return root / f"test-{shards.cache_key(CONFIG)}"


def make(root: Path, **replace) -> dict:
    return build(corpus_dir(root), CONFIG, jobs(**replace), fake_worker, workers=2, progress=False)


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return corpus_dir(root), make(root)


def test_splits_round_trip_exactly(built):
    directory, manifest = built
    splits = load_splits(directory, manifest)
    assert sorted(splits) == manifest["splits"] == ["dev", "train"]
    for split in ("train", "dev"):
        expect = [u for (s, _), payload in PLAN.items() if s == split
                  for u in zip(*fake_utterances(*payload))]
        utts = splits[split]
        assert utts.ids == [uid for uid, _, _ in expect]
        assert utts.lengths.tolist() == [len(y) for _, _, y in expect]
        for i, (_, feats, labels) in enumerate(expect):
            f, y = utts[i]
            assert f.dtype == torch.float32 and y.dtype == torch.int16
            assert np.array_equal(f.numpy(), feats) and np.array_equal(y.numpy(), labels)
    assert not (directory / shards.PARTS).exists()  # the workers' parts go once the splits exist
    assert [e["seconds"] for e in manifest["shards"]] == [1.5] * 3


def test_users_open_it_with_datasets(built):
    import datasets

    directory, _ = built
    corpus = datasets.load_from_disk(str(directory))
    assert isinstance(corpus, datasets.DatasetDict) and sorted(corpus) == ["dev", "train"]
    row = corpus["train"].with_format("torch")[1]
    ids, feats, labels = fake_utterances(*PLAN[("train", 0)])
    assert row["id"] == ids[1] and torch.equal(row["feats"], torch.from_numpy(feats[1]))
    assert torch.equal(row["labels"], torch.from_numpy(labels[1]))


def _mapped_ranges(suffix: str) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[-1].endswith(suffix):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_opening_maps_the_arrow_files_instead_of_copying(built):
    """Every frame block lies inside a memory mapping of an .arrow file: a copy would not."""
    directory, manifest = built
    splits = load_splits(directory, manifest)
    mapped = _mapped_ranges(".arrow")
    assert mapped
    for utts in splits.values():
        for feats, labels in utts.blocks:
            for t in (feats, labels):
                lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
                assert any(a <= lo and hi <= b for a, b in mapped), "a frame block was copied"
    # selecting and concatenating share the blocks too
    train = splits["train"]
    both = Utterances.concat([train.select([2, 0]), splits["dev"]])
    assert both[0][0].data_ptr() == train[2][0].data_ptr() and both.ids[-1] == splits["dev"].ids[0]


@pytest.mark.slow  # the fast tier checks the same through eSpeak: test_generation_is_byte_identical
def test_two_builds_are_byte_identical(built, tmp_path):
    directory, _ = built
    again = corpus_dir(tmp_path)
    make(tmp_path)
    first, second = files(directory), files(again)
    assert sorted(first) == sorted(second)
    assert {"manifest.json", "dataset_dict.json", "train/state.json", "train/dataset_info.json"} <= set(first)
    assert [n for n in first if first[n] != second[n]] == []


def _copy(directory: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(directory, dest)
    return dest


def test_damaged_files_are_refused_naming_the_file_and_the_fix(built, tmp_path):
    directory, manifest = built
    copy = _copy(directory, tmp_path / directory.name)
    arrow = next((copy / "train").glob("*.arrow"))
    data = arrow.read_bytes()
    load_splits(copy, manifest)  # intact: opens (and records the file as verified)

    arrow.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DataError, match=rf"{re.escape(str(arrow))} has {len(data) // 2} bytes.*"
                                        rf"Delete {re.escape(str(copy))} to rebuild"):
        load_splits(copy, manifest)

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # same size, one byte changed
    arrow.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=rf"checksum mismatch for cache file {re.escape(str(arrow))}.*Delete"):
        load_splits(copy, manifest)
    # without hashes a damaged table can still not be misread silently past its size check
    arrow.unlink()
    with pytest.raises(DataError, match=rf"missing cache file {re.escape(str(arrow))}.*Delete"):
        load_splits(copy, manifest, verify=False)


def test_sha256_once_per_process_then_size_only(built, monkeypatch, tmp_path):
    directory, manifest = built
    copy = _copy(directory, tmp_path / directory.name)
    calls = []
    real = shards.sha256sum
    monkeypatch.setattr(shards, "sha256sum", lambda p: calls.append(Path(p).name) or real(p))
    load_splits(copy, manifest)
    assert len(calls) == len(manifest["files"])
    load_splits(copy, manifest)
    assert len(calls) == len(manifest["files"])  # second open: no hashing
    state = copy / "dev" / "state.json"
    os.utime(state, ns=(0, 0))  # touched (e.g. rewritten): hashed again
    load_splits(copy, manifest)
    assert calls[len(manifest["files"]):] == ["state.json"]


def test_interrupted_build_keeps_finished_parts_and_is_never_read(tmp_path):
    directory = corpus_dir(tmp_path)
    with pytest.raises(RuntimeError, match="worker ran a fail job"):
        build(directory, CONFIG, jobs(train1="fail", dev0="fail"), fake_worker, workers=1, progress=False)
    assert sorted(p.name for p in (directory / shards.PARTS).iterdir()) == ["train-00000.pt", "train-00000.pt.json"]
    with pytest.raises(DataError, match=r"no manifest.json in .*incomplete; delete the directory"):
        load_manifest(directory)
    (directory / "train").mkdir()  # a split left without its manifest (a crash while writing)
    # resuming runs only what is missing: the finished part's job would fail if it ran again
    manifest = build(directory, CONFIG, jobs(train0="poison"), fake_worker, workers=2, progress=False)
    splits = load_splits(directory, manifest)
    assert len(splits["train"]) == 5 and splits["train"].ids[0] == "s1-0"


def test_format_1_cache_is_converted_not_recomputed(built, tmp_path):
    legacy = shards.legacy_directory(corpus_dir(tmp_path), CONFIG)
    assert legacy != corpus_dir(tmp_path) and shards.cache_key(CONFIG) != shards.cache_key(CONFIG, version=1)
    legacy.mkdir(parents=True)
    entries = [{"split": s, **write_shard(legacy / job.file, *fake_utterances(*PLAN[(s, i)])), "seconds": 1.5}
               for job in jobs() for s, i in [(job.split, job.index)]]
    (legacy / "manifest.json").write_text(json.dumps({"format": 1, "config": CONFIG, "shards": entries,
                                                      "plan": {"train": []}}))
    with pytest.raises(DataError, match=r"format-1 cache; this bnrnn reads format 2.*converts"):
        load_manifest(legacy)
    poisoned = {f"{s}{i}": "poison" for s, i in PLAN}
    manifest = build(corpus_dir(tmp_path), CONFIG, jobs(**poisoned), fake_worker, progress=False)
    assert manifest["plan"] == {"train": []} and (legacy / "manifest.json").is_file()
    reference = built[1]
    converted, fresh = files(corpus_dir(tmp_path)), files(built[0])
    del converted["manifest.json"], fresh["manifest.json"]  # the converted one keeps the old extras
    assert converted == fresh and manifest["files"] == reference["files"]
