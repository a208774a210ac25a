"""Shared fixtures. Tests use ../shared/data (beside the repo, as in CI) or data they make."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the fused Triton kernels run in Triton's CPU interpreter; it must be chosen before
# triton is first imported, so here (tests may set the environment; the library never reads it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} not found: clone the repo with the shared/ folder beside it")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ptb_root(shared_data) -> Path:
    return shared_data / "ptb"


def pytest_collection_finish(session):
    # A run that collects no test is a broken suite, never a pass (CI reads pytest's exit code).
    if not session.items and not session.config.getoption("collectonly"):
        raise pytest.UsageError("bnrnn: no tests were collected; check the -m/-k selection and testpaths")
