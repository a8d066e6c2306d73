import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """A session-wide folder for tiny models built once and shared by tests."""
    return tmp_path_factory.mktemp("models")


# Tiny models gain nothing from a second thread, and when the other core is busy (a WebUI server,
# a benchmark) torch's thread hand-offs make tiny operations up to 100x slower.
torch.set_num_threads(1)
