"""Shared test set-up.

Without a CUDA device, Triton kernels run under its interpreter; that must be
chosen before triton is first imported, hence at the very top of this file.
Kernels are then launched on CPU tensors.
"""

import os
import sys
import tempfile
from pathlib import Path

import torch
from hypothesis import configuration as _hypothesis_config

# Hypothesis keeps example databases and constant caches in its home directory (default: ./.hypothesis);
# tests write only to temporary directories.
_hypothesis_config.set_hypothesis_home_dir(tempfile.mkdtemp(prefix="attncc-hypothesis-"))
# Kernel copies and the tuning cache go to a private temporary directory whatever command runs the
# tests (never the user's ~/.cache/attncc or a team's tuning database named by ATTNCC_STORAGE).
os.environ["ATTNCC_CACHE_DIR"] = tempfile.mkdtemp(prefix="attncc-test-cache-")
os.environ.pop("ATTNCC_STORAGE", None)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `tests/reference.py` is imported as `reference` by the test modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Small tiles: several full and partial tiles per case, and fast under the interpreter.
SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
