"""Every experiment config builds what ``bnrnn.train`` builds from it — data on the test fixtures,
the model from ``data.dims``, the optimizer and the schedule — and takes one training step, so a
config that no longer fits its classes fails here instead of at the start of a run.

The experiments keep their own model sizes; only the data is small (the fixtures,
``limit_batches=1``) and the step short (the batch cut to its first few frames). One exception:
generating even a 4-utterance eSpeak corpus takes ~10 s (a fresh process per shard), so for
speech_synthetic* the model gets the dims its data would give (feature and class counts from the
corpus code, identity input statistics) and a random batch; that data config is built through
Hydra by tests/test_speech_synthetic.py's trainer run."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from bnrnn.config import check_data_files, validate, validate_data
from bnrnn.contracts import DIMS, DataModule, Model
from bnrnn.data.download import md5sum
from bnrnn.data.speech.batching import FEATURE_DIM
from bnrnn.data.speech.espeak import PHONEME_CLASSES
from tests.helpers import CONFIG_DIR, make_cfg
from tests.test_speech_librispeech import FIXTURE_LABELS_SHA1, TEST, TRAIN, make_root

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
STEPS = 4  # frames of the batch the step sees


def data_overrides(experiment: str, fixtures: dict[str, Path], tmp: Path) -> list[str]:
    """Point the experiment's data at the fixtures (nothing downloaded: download=false)."""
    common = [f"paths.cache_dir={tmp / 'cache'}", "data.download=false", "data.limit_batches=1"]
    if experiment.startswith("ptb_"):
        return [*common, f"data.root={fixtures['ptb']}"]
    if experiment in ("grid_char_rnn", "cooijmans_char_ptb"):
        return [*common, f"data.root={fixtures['ptb_char']}"]
    speech = [*common, "data.workers=1", "data.progress=false", "data.batch_size=1",
              "data.eval_batch_size=1"]
    if experiment.startswith("speech_synthetic"):  # not built (see the module docstring)
        return [*speech, f"data.root={fixtures['ptb']}"]
    if experiment == "speech_librispeech":  # the 2-utterance sample, one of them held out as dev
        sample = fixtures["librispeech"]
        root = make_root(tmp / "root", sample, train=(TRAIN, TEST), test=(TEST,))
        md5 = {s: md5sum(root / f"{s}_split.txt") for s in ("train", "test")}
        return [*speech, f"data.root={root}", f"data.audio_dir={sample / 'test_db'}",
                "data.labels_file=phone_labels.txt", f"data.labels_sha1={FIXTURE_LABELS_SHA1}",
                f"data.split_md5={{train: {md5['train']}, test: {md5['test']}}}",
                "data.dev_fraction=0.5", "data.max_frames=null"]
    raise AssertionError(f"no fixture data for experiment={experiment}: add it here")


def synthetic_speech_stand_in() -> tuple[dict, tuple]:
    """The dims SyntheticSpeechData gives and a random batch of two utterances in its format."""
    dims = {"feature_dim": FEATURE_DIM, "num_classes": len(PHONEME_CLASSES),
            "feature_mean": [0.0] * FEATURE_DIM, "feature_std": [1.0] * FEATURE_DIM}
    lengths = torch.tensor([STEPS, STEPS - 1])
    labels = torch.randint(0, len(PHONEME_CLASSES), (STEPS, 2))
    labels[STEPS - 1, 1] = -100  # the shorter utterance's padding
    return dims, (torch.randn(STEPS, 2, FEATURE_DIM), lengths, labels)


def first_frames(batch: tuple, n: int) -> tuple:
    """The batch cut to its first ``n`` time steps (time-major; a speech batch's lengths too)."""
    if len(batch) == 3:  # features, lengths, labels
        x, lengths, y = batch
        return x[:n], lengths.clamp(max=n), y[:n]
    return tuple(t[:n] for t in batch)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds_and_steps(experiment, ptb_root, ptb_char_root, librispeech_sample,
                                    tmp_path):
    fixtures = {"ptb": ptb_root, "ptb_char": ptb_char_root, "librispeech": librispeech_sample}
    cfg = make_cfg([f"experiment={experiment}", "device=cpu", "quiet=true",
                    *data_overrides(experiment, fixtures, tmp_path)])
    assert cfg.name == experiment
    assert cfg.trainer.max_epochs >= 1 and cfg.trainer.protocol_epochs == cfg.trainer.max_epochs
    # the fixture data is where the configuration says: nothing is refused before the run
    check_data_files(validate(cfg))
    if experiment.startswith("speech_synthetic"):
        dims, batch = synthetic_speech_stand_in()
    else:
        data = instantiate(cfg.data)
        validate_data(cfg, data)
        assert isinstance(data, DataModule)
        dims, batch = data.dims, next(iter(data.batches("train", 1)))
    # the coupling bnrnn/contracts.py writes down: the model takes exactly the data's dims
    assert set(dims) == set(DIMS[cfg.data._target_])
    model = instantiate(cfg.model, **dims)
    assert isinstance(model, Model)
    optimizer = instantiate(cfg.optim, params=model.parameters())
    scheduler = instantiate(cfg.schedule, optimizer=optimizer) if cfg.schedule else None

    model.train()
    out = model(first_frames(batch, STEPS), None)
    out.objective.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    assert torch.isfinite(out.objective) and int(out.count) > 0
    totals = {"loss_sum": float(out.loss_sum), "count": int(out.count)}
    metrics = model.metrics(totals | {k: float(v) for k, v in out.sums.items()})
    assert model.selection in metrics
    chance = getattr(model, "chance_loss", None)
    assert chance is None or out.loss_sum.item() / int(out.count) < chance + 5
