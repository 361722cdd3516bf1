"""Test-suite settings: offline, loopback only, tiny models, no telemetry."""

from __future__ import annotations

import os
from pathlib import Path

# Set before any library import reads them: nothing in the suite may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: one thread is many times faster than two spinning threads on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent


def golden_root() -> Path:
    """Root of the reference data (``RAM_GROUNDED_GOLDEN``, default ../shared/golden)."""
    return Path(os.environ.get("RAM_GROUNDED_GOLDEN", REPO_ROOT.parent / "shared" / "golden"))


@pytest.fixture
def tiny_zoo(monkeypatch):
    """Every zoo name resolves to a tiny random-weight model."""
    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    yield
