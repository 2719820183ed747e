"""Test-session setup: offline hub, quiet logs, one torch thread (tiny models run faster single-threaded)."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# Built-in models and reference caches go to a per-session temporary folder, never the user's ~/.cache.
os.environ["VISALIGN_CACHE"] = tempfile.mkdtemp(prefix="visalign-test-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
