"""The offline eSpeak corpus: byte-identical generations, exact labels, clear errors, and a
few-batch run of experiment=speech_synthetic through the trainer."""
import ctypes
import json
import subprocess
import sys

import numpy as np
import pytest

from bnrnn.data.download import DataError
from bnrnn.data.speech import espeak
from bnrnn.data.speech.espeak import PHONEME_CLASSES, Segment, class_of, frame_labels
from bnrnn.data.speech.synthetic import SyntheticSpeechData, make_plan, normalize
from tests.helpers import train

SIZES = {"train": 4, "dev": 2, "test": 2}


def corpus_options(ptb_root, cache):
    return dict(root=str(ptb_root), cache_dir=str(cache), utterances=SIZES, shard_size=2,
                workers=2, progress=False, max_frames=None)


@pytest.fixture(scope="module")
def corpus(ptb_root, tmp_path_factory):
    return SyntheticSpeechData(**corpus_options(ptb_root, tmp_path_factory.mktemp("synth")))


def test_generation_is_byte_identical(corpus, ptb_root, tmp_path):
    """Same config, a second cache: every file (Arrow tables, datasets' state.json and
    dataset_info.json, the manifest) is byte-for-byte the same."""
    again = SyntheticSpeechData(**corpus_options(ptb_root, tmp_path))
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    first = files(corpus.directory)
    assert first == files(again.directory)
    assert {"manifest.json", "dataset_dict.json", "train/state.json", "train/dataset_info.json",
            "train/data-00000-of-00001.arrow"} <= set(first)
    assert [s["split"] for s in again.manifest["shards"]].count("train") == 2  # two processes
    for name in first:
        assert (corpus.directory / name).read_bytes() == (again.directory / name).read_bytes(), name


def test_manifest_and_splits(corpus):
    manifest = json.loads((corpus.directory / "manifest.json").read_text())
    assert [len(manifest["plan"][s]) for s in ("train", "dev", "test")] == [4, 2, 2]
    assert manifest["config"]["classes"] == list(PHONEME_CLASSES)
    assert all(len(s["sha256"]) == 64 and s["frames"] > 0 for s in manifest["shards"])
    assert {s: len(u) for s, u in corpus.splits.items()} == SIZES
    voices = {u["voice"] for s in manifest["plan"].values() for u in s}
    assert voices <= set(espeak.VOICES) and len(voices) > 1
    assert corpus.dims["num_classes"] == len(PHONEME_CLASSES) == 75
    features, lengths, labels = next(corpus.batches("dev"))
    assert features.shape[1:] == (2, 123) and labels.shape == features.shape[:2]
    # an utterance ends in eSpeak's end pause (silence) and has many phonemes before it
    for b in range(2):
        y = labels[: lengths[b], b]
        assert y[-1] == 0 and len(set(y.tolist())) > 5


def test_corpus_changes_with_its_seed(corpus, ptb_root, tmp_path):
    other = SyntheticSpeechData(**corpus_options(ptb_root, tmp_path) | {"utterances": {"train": 2}, "seed": 1})
    assert other.directory.name != corpus.directory.name
    assert other.manifest["plan"]["train"] != corpus.manifest["plan"]["train"][:2]


def test_frame_labels_take_the_phoneme_at_each_frame_centre():
    # frame t covers samples [160 t, 160 t + 400) at 16 kHz: its centre is 10 t + 12.5 ms
    segments = [Segment("_", 0, 20), Segment("n", 20, 33), Segment("_:", 33, 60)]
    labels = frame_labels(segments, num_samples=16 * 60)  # 60 ms -> 4 frames
    assert labels.tolist() == [0, class_of("n"), class_of("n"), 0]  # centres 12.5, 22.5, 32.5, 42.5 ms
    labels = frame_labels([Segment("_", 0, 10), Segment("n", 10, 40)], num_samples=16 * 40)
    assert labels.tolist() == [class_of("n"), class_of("n")]  # centres 12.5 and 22.5 ms


def test_phoneme_inventory():
    assert PHONEME_CLASSES[0] == "sil" and len(set(PHONEME_CLASSES)) == len(PHONEME_CLASSES)
    assert class_of("_") == class_of("_:") == class_of("_!") == 0
    assert class_of("aI@") == PHONEME_CLASSES.index("aI@")
    with pytest.raises(DataError, match=r"phoneme 'Q\^'.*PHONEMES"):
        class_of("Q^")


def test_text_normalisation_and_plan():
    rng = np.random.default_rng(0)
    text = normalize("the <unk> company 's N shares did n't rise".split(), rng)
    assert "<unk>" not in text and "company's" in text and "didn't" in text
    assert " N " not in text and any(ch.isdigit() for ch in text)
    lines = ["a b c d", "too short", "one two three four five"]
    plan = make_plan(lines, 5, np.random.default_rng(1), min_words=3, voices=["en-us", "en"],
                     variants=["", "f1"], rate=(150, 160), pitch=(40, 40), pitch_range=(50, 50),
                     prefix="dev")
    assert [u["id"] for u in plan] == [f"dev-{k:06d}" for k in range(5)]
    assert {u["line"] for u in plan} <= {0, 2}  # "too short" has 2 < 3 words
    assert all(150 <= u["rate"] <= 160 and u["pitch"] == 40 for u in plan)


def test_stress_marks_are_not_classes():
    # espeak-ng 1.52 writes eSpeak's stress marks in front of a stressed vowel; 1.51 does not
    for bare in ("V", "aI3", "i@3", "E"):
        assert class_of("'" + bare) == class_of("," + bare) == class_of(bare) > 0
    assert class_of("_:") == 0
    with pytest.raises(DataError, match="not in bnrnn's inventory"):
        class_of("'Q")


def _library_or_skip(which):
    try:
        return espeak.load_library(which)[1]
    except DataError as e:
        pytest.skip(f"no {which} libespeak-ng here: {e}")


@pytest.mark.parametrize("which", ["bundled", "system"])
def test_each_library_speaks_within_the_inventory(which, ptb_root, tmp_path):
    """Both libraries build a corpus whose every event is a class, keyed by their versions."""
    found = _library_or_skip(which)
    assert found.source == which
    data = SyntheticSpeechData(**corpus_options(ptb_root, tmp_path) | {"library": which, "workers": 1,
                                                                       "utterances": {"train": 2}})
    manifest = json.loads((data.directory / "manifest.json").read_text())
    assert manifest["config"]["espeak"] == espeak.library_version(which)
    labels = data.splits["train"].frames()[1]
    assert labels.min() >= 0 and labels.max() < len(PHONEME_CLASSES) and (labels > 0).float().mean() > 0.5


def test_system_library_is_the_system_one_beside_the_bundled_one():
    """With the bundled library loaded first (same soname), ``system`` still reports the
    system library's version, as a process that never loaded the bundled one does."""
    _library_or_skip("bundled")
    espeak.library_version("bundled")
    _library_or_skip("system")
    fresh = subprocess.run([sys.executable, "-c", "from bnrnn.data.speech import espeak; "
                            "print(espeak.library_version('system'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert espeak.library_version("system") == fresh
    assert espeak.find_library("system").path != espeak.find_library("bundled").path


def test_system_library_that_is_the_bundled_one_is_refused(monkeypatch):
    bundled = _library_or_skip("bundled")
    monkeypatch.setattr(espeak, "_system_path", lambda: bundled.path)
    with pytest.raises(DataError, match=r"library=system\) resolved to the bundled .*library=bundled"):
        espeak.load_library("system")


def test_bundled_library_missing_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wheel(name, *args, **kwargs):
        if name == "espeakng_loader":
            raise ImportError("No module named 'espeakng_loader'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wheel)
    with pytest.raises(DataError, match=r"pip install espeakng-loader"):
        espeak.find_library("bundled")
    assert espeak.find_library("auto").source == "system"
    with pytest.raises(ValueError, match="must be one of auto, bundled, system; got 'apt'"):
        espeak.find_library("apt")


def test_missing_libespeak_says_how_to_install(monkeypatch, ptb_root, tmp_path):
    monkeypatch.setattr(espeak.ctypes.util, "find_library", lambda name: None)

    def no_library(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(espeak.ctypes, "CDLL", no_library)
    with pytest.raises(DataError, match=r"libespeak-ng is not installed.*apt-get install espeak-ng"):
        SyntheticSpeechData(**corpus_options(ptb_root, tmp_path))
    assert ctypes.CDLL is no_library  # (the patch was what failed, not something else)


def test_bad_config_is_a_clear_error(ptb_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['valid'\]"):
        SyntheticSpeechData(**corpus_options(ptb_root, tmp_path) | {"utterances": {"valid": 3}})
    with pytest.raises(ValueError, match=r"rate must be \[min, max\]"):
        SyntheticSpeechData(**corpus_options(ptb_root, tmp_path) | {"rate": [200, 100]})
    with pytest.raises(ValueError, match="unknown voice 'xx-yy'"):
        espeak.ESpeak().set_voice("xx-yy")


@pytest.mark.parametrize("norm", ["bn_input"])
def test_experiment_runs_a_few_batches(corpus, ptb_root, norm):
    """experiment=speech_synthetic end to end on the small corpus (tiny model, 2 batches)."""
    cache = corpus.directory.parent
    overrides = ["experiment=speech_synthetic", f"data.root={ptb_root}", f"data.cache_dir={cache}",
                 "data.utterances={train: 4, dev: 2, test: 2}", "data.shard_size=2",
                 "data.max_frames=null", "data.batch_size=2", "data.eval_batch_size=2",
                 "data.progress=false", "model.hidden_size=8", "model.num_layers=2",
                 f"model.norm={norm}", "trainer.max_epochs=1", "device=cpu", "quiet=true",
                 "trainer.check_every=1"]
    run_dir = cache.parent / f"run-{norm}"
    objective, final, rows = train(overrides, run_dir)
    assert final["status"] == "completed" and final["selection"] == "dev_fce"
    assert rows[0]["step"] == 2 and 0 < rows[0]["train_fer"] <= 1
    assert objective == rows[0]["dev_fce"] and final["test"]["fer"] <= 1
    assert np.log(75) * 0.5 < rows[0]["dev_fce"] < np.log(75) * 2  # ~uniform after 2 steps
