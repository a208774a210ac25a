"""Shared fixtures. Tests read the small dataset samples in tests/fixtures/ (see its README) or
data they make; the few that need a whole corpus (``@pytest.mark.full_data``) read the folder
that the environment variable BNRNN_DATA names (holding ptb/, ptb_char/, ...) and skip without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the fused Triton kernels run in Triton's CPU interpreter; it must be chosen before
# triton is first imported, so here (tests may set the environment; the library never reads it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread, here and (through the environment) in every process a test starts: the
# tests' tensors are tiny, so extra threads only add synchronisation, and on a busy machine
# their spinning made a two-step tiny speech run take minutes instead of seconds. Set before
# any subprocess starts; a test that wants more threads sets them itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
FULL_DATA_ENV = "BNRNN_DATA"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ptb_root() -> Path:
    """Word PTB, the first lines of each split (tests/fixtures/ptb), readable with data.root=."""
    return FIXTURES / "ptb"


@pytest.fixture(scope="session")
def ptb_char_root() -> Path:
    """Character PTB, the first lines of each split, all 50 classes (tests/fixtures/ptb_char)."""
    return FIXTURES / "ptb_char"


@pytest.fixture(scope="session")
def librispeech_sample() -> Path:
    """Two LibriSpeech train-clean-100 utterances (test_db/<spk>/<chapter>/) and the CPC labels."""
    return FIXTURES / "librispeech_sample"


def _full_data() -> Path | None:
    value = os.environ.get(FULL_DATA_ENV)
    return Path(value).expanduser() if value else None


def pytest_collection_modifyitems(config, items):
    if _full_data() is not None:
        return
    skip = pytest.mark.skip(reason=f"needs the full corpora: set {FULL_DATA_ENV} to a folder "
                                   f"holding ptb/, ptb_char/ (the fixtures are a few hundred lines)")
    for item in items:
        if item.get_closest_marker("full_data") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The folder of full dataset copies that $BNRNN_DATA names (tests marked ``full_data``)."""
    path = _full_data()
    if path is None:
        pytest.skip(f"needs the full corpus: set {FULL_DATA_ENV} to a folder holding ptb/, ptb_char/")
    if not path.is_dir():
        pytest.fail(f"{FULL_DATA_ENV}={path} is not a directory")
    return path


def pytest_collection_finish(session):
    # A run that collects no test is a broken suite, never a pass (CI reads pytest's exit code).
    if not session.items and not session.config.getoption("collectonly"):
        raise pytest.UsageError("bnrnn: no tests were collected; check the -m/-k selection and testpaths")
