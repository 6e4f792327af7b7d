"""Shared fixtures: tiny random-weight models of each family, loaded once per session."""

import os

# Before anything imports huggingface_hub: no network in tests, fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from vlmlib.data import shapes_samples  # noqa: E402
from vlmlib.models import load_model  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

RANDOM_MODELS = ["paligemma-random", "qwen2vl-random"]


@pytest.fixture(scope="session", params=RANDOM_MODELS)
def lm(request):
    """A tiny random-weight model of each family (eager attention, so weights can be read)."""
    return load_model(request.param, device="cpu", dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="session")
def samples():
    return shapes_samples(6, seed=123)
