"""Shared test set-up: offline, CPU, quiet; the tiny model is built once per session."""

import os

# Must be set before transformers/datasets/trl are imported by any test module.
from trl_ext.embedded import offline_environment  # stdlib only: before transformers is imported

offline_environment()
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# the measuring harness is not library code: it lives beside the benchmarks that use it (`import memory_harness`)
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
TEST_DATA = REPO_ROOT / "recipes" / "data"  # example files, and real public data (HH-RLHF, see its README.md)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from trl_ext.toy.tiny import tiny_model_path as build

    return build()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
