"""Shared pytest fixtures: the real SmolLM2 model in its formats, and an isolated models folder.

Fixtures specific to one area (the hub test server, GPTQ checkpoints...) live in that area's test helpers
(`tests/hubserver.py`, `tests/gptq_fixtures.py`) and are imported by the tests that use them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import realmodel

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes (pytest-xdist, pyproject.toml) share the cores: OpenMP threads that wait sleep rather than
    # spin, or one process's spinning threads starve the other's work (and the apps and probes they start).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Several developers share two cores: OpenMP spinning over oversubscribed cores slows the small matmuls ~100x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf (read-only: copy it before changing it)."""
    return realmodel.smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """A Transformers folder of SmolLM2-135M-Instruct (read-only)."""
    return realmodel.smollm2_hf()


def link_tree(src: Path, dst: Path) -> Path:
    """Make `dst` a folder of hard links (or copies) to the files of `src`: cheap, and `src` stays untouched."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)
    return dst


@pytest.fixture()
def models_dir(tmp_path: Path, smollm2_hf: Path, smollm2_gguf: Path) -> Path:
    """A models/ folder holding `SmolLM2-135M-Instruct` (Transformers) and `SmolLM2-135M-Instruct-GGUF`."""
    root = tmp_path / "models"
    link_tree(smollm2_hf, root / "SmolLM2-135M-Instruct")
    link_tree(smollm2_gguf.parent, root / "SmolLM2-135M-Instruct-GGUF")
    return root


from tests.browser import browser_page  # noqa: E402, F401  (the Playwright page fixture for browser tests)
