"""The model-files layer: names checked (never resolved), links followed, one GGUF choice honoured by detection,
plan, estimate and load, and hostile headers refused before anything is allocated."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from gguf import GGUF_MAGIC, GGUFValueType

from loaders.errors import ModelFormatError, ModelNameError, ModelNotFoundError
from loaders.files import file_in_folder, list_models, model_path, read_model_files
from loaders.files.gguf_header import parse_gguf_header, read_gguf_header
from tests import realmodel
from webui.settings import ModelSettings
from webui.state import AppConfig, AppState

ROOT = Path(__file__).resolve().parents[1]
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")


def _state(models: Path, tmp_path: Path) -> AppState:
    return AppState(config=AppConfig(models_dir=models, user_data_dir=tmp_path / "data"))


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", "a\\b", ""])
def test_paths_are_refused_by_name(tmp_path: Path, name: str) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelNameError, match="name") as error:
        model_path(tmp_path / "models", name)
    assert "not a model name" in str(error.value) or "Give a model name" in str(error.value)
    with pytest.raises(ModelNameError):
        file_in_folder(tmp_path / "models", name or "..")


def test_settings_file_names_outside_the_folder_are_refused(tmp_path: Path, smollm2_gguf: Path) -> None:
    folder = tmp_path / "models" / "m"
    folder.mkdir(parents=True)
    (folder / smollm2_gguf.name).hardlink_to(smollm2_gguf)
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    for bad in ("/etc/passwd", "../secret.gguf", str(secret)):
        with pytest.raises(ModelNameError) as error:
            file_in_folder(folder, bad)
        assert "root:" not in str(error.value)
    with pytest.raises(ModelNotFoundError, match="no file 'missing.gguf'"):
        file_in_folder(folder, "missing.gguf")
    state = _state(tmp_path / "models", tmp_path)
    view = state.models.inspect("m", loader="llama.cpp", loader_settings={"file": "../secret.gguf"})
    assert view.plan is None and "root:" not in view.plan_error and "../secret.gguf" in view.plan_error


def test_symlinked_folder_and_file_are_models(tmp_path: Path, smollm2_hf: Path, smollm2_gguf: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "SmolLM2-135M-Instruct").symlink_to(smollm2_hf, target_is_directory=True)  # models on another disk
    (models / "smol.gguf").symlink_to(smollm2_gguf)
    state = _state(models, tmp_path)
    assert list_models(models) == ["smol.gguf", "SmolLM2-135M-Instruct"]
    assert state.models.path_of("SmolLM2-135M-Instruct") == models / "SmolLM2-135M-Instruct"  # not resolved
    for name, loader in (("SmolLM2-135M-Instruct", "transformers"), ("smol.gguf", "gguf")):
        view = state.models.inspect(name, loader=loader)
        assert view.plan is not None and view.estimate is not None, view.plan_error


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("link", ["folder", "file"])
def test_symlinked_models_load_and_chat(tmp_path: Path, smollm2_gguf: Path, link: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    if link == "folder":
        name = "SmolLM2-GGUF"
        (models / name).symlink_to(smollm2_gguf.parent, target_is_directory=True)
    else:
        name = "smol.gguf"
        (models / name).symlink_to(smollm2_gguf)
    command = [sys.executable, "app.py", "--models-dir", str(models), "--data-dir", str(tmp_path / "data"),
               "--model", name, "--loader", "llama.cpp", "--prompt", "What is the capital of France?", "--chat",
               "--greedy", "--max-new-tokens", "12"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout


# --- one GGUF choice --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_quants() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python to make the quants")
    return realmodel.smollm2_quants()


def _quant_folder(tmp_path: Path, three_quants: Path) -> Path:
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct-GGUF"
    folder.mkdir(parents=True)
    for file in three_quants.iterdir():
        (folder / file.name).hardlink_to(file)
    return folder


def test_default_pick_is_q4_k_m_by_metadata(tmp_path: Path, three_quants: Path) -> None:
    files = read_model_files(_quant_folder(tmp_path, three_quants))
    assert sorted(c.quant for c in files.ggufs) == ["Q2_K", "Q4_K_M", "Q8_0"]
    assert files.gguf.quant == "Q4_K_M" and files.header.quant == "Q4_K_M"


def test_remembered_download_pick_is_honoured(tmp_path: Path, three_quants: Path) -> None:
    folder = _quant_folder(tmp_path, three_quants)
    q8 = "smollm2-135m-instruct.Q8_0.gguf"
    (folder / ".corral-source.json").write_text(json.dumps({"repo": "x/y", "branch": "main", "gguf_file": q8}))
    state = _state(folder.parent, tmp_path)
    view = state.models.inspect(folder.name, loader="llama.cpp")
    assert view.detection.settings["file"] == q8
    assert view.plan.opens == (folder / q8,)
    assert view.estimate.file_bytes == (folder / q8).stat().st_size


@needs_llama_cpp
def test_user_pick_is_estimated_and_loaded(tmp_path: Path, three_quants: Path) -> None:
    from webui.ui.model import _status

    folder = _quant_folder(tmp_path, three_quants)
    q8 = "smollm2-135m-instruct.Q8_0.gguf"
    state = _state(folder.parent, tmp_path)
    assert state.models.inspect(folder.name).detection.settings["file"].endswith("Q4_K_M.gguf")
    state.settings.save(folder.name, ModelSettings("llama.cpp", {"file": q8, "n_ctx": 512}))
    view = state.models.inspect(folder.name)
    assert view.plan.opens == (folder / q8,) and "Q8_0" in view.plan.describe()
    assert view.estimate.file_bytes == (folder / q8).stat().st_size
    info = state.models.load(folder.name, loader_settings={"threads": 1})
    try:
        assert info.model.path == folder / q8
        assert q8 in _status(state)  # the load message names the file that was loaded
    finally:
        state.models.unload()


# --- hostile headers --------------------------------------------------------------------------------------------


def _header(*kv: bytes, n_tensors: int = 0) -> bytes:
    return struct.pack("<IIQQ", GGUF_MAGIC, 3, n_tensors, len(kv)) + b"".join(kv)


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _array_kv(count: int, item_type: GGUFValueType) -> bytes:
    return _string("tokenizer.ggml.tokens") + struct.pack("<IIQ", GGUFValueType.ARRAY, item_type, count)


@pytest.mark.parametrize(
    "data",
    [
        _header(_array_kv(2**40, GGUFValueType.UINT32)),  # a 4 TB array of numbers in a 1 KB file
        _header(_array_kv(2**40, GGUFValueType.STRING)),
        _header(_string("k") + struct.pack("<I", GGUFValueType.STRING) + struct.pack("<Q", 2**50)),  # huge string
        _header(n_tensors=2**40),
        _header(struct.pack("<Q", 2**62)),  # a key longer than the file
    ],
)
def test_hostile_gguf_header_fails_fast_and_small(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "evil.gguf"
    path.write_bytes(data + b"\0" * (1024 - len(data)))
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(ModelFormatError, match="more than the file can hold|not a complete GGUF") as error:
        read_gguf_header(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 1.0 and peak < 50 * 1024 * 1024
    assert error.value.path == path
    with pytest.raises(ModelFormatError):
        read_model_files(tmp_path)  # detection of the folder: the same clear error


def test_hostile_dims_refused() -> None:
    tensor = _string("blk.0.attn_q.weight") + struct.pack("<I", 9) + struct.pack("<9Q", *[2] * 9)
    with pytest.raises(ModelFormatError, match="dimensions"):
        parse_gguf_header(_header(n_tensors=1) + tensor, file_size=4096)


def test_real_header_parses_like_the_library(smollm2_gguf: Path) -> None:
    import gguf

    header = read_gguf_header(smollm2_gguf)
    reader = gguf.GGUFReader(smollm2_gguf)
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    assert [t.nbytes for t in header.tensors] == [int(t.n_bytes) for t in reader.tensors]
    assert header.quant == "Q4_1" and header.get("general.architecture") == "llama"
    assert os.path.getsize(smollm2_gguf) > header.size > 1_000_000


EVIL_GGUF = _header(_array_kv(2**40, GGUFValueType.UINT32))
PROBE = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from loaders.errors import ModelFormatError
from loaders.files import read_model_files
started = time.monotonic()
try:
    read_model_files(__import__("pathlib").Path(sys.argv[1]))
except ModelFormatError as error:
    print(f"{{time.monotonic() - started:.3f}} {{error}}")
"""


def test_hostile_gguf_is_refused_under_an_address_space_limit(tmp_path: Path) -> None:
    """`ulimit -v` leaves the interpreter 300 MB above what it needs to start: a parser that allocated by the
    header's counts would die with MemoryError; ours answers with the clear error in well under a second."""
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "evil.gguf").write_bytes(EVIL_GGUF + b"\0" * (1024 - len(EVIL_GGUF)))
    start = subprocess.run([sys.executable, "-c", "import loaders.files, resource, psutil; "
                            "print(psutil.Process().memory_info().vms)"],
                           capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)  # fmt: skip
    limit = int(start.stdout) + 300 * 1024 * 1024
    probe = subprocess.run([sys.executable, "-c", PROBE.format(limit=limit), str(tmp_path / "evil")],
                           capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert probe.returncode == 0, probe.stderr[-2000:]
    seconds, message = probe.stdout.split(" ", 1)
    assert float(seconds) < 1.0 and "more than the file can hold" in message, probe.stdout


def test_the_app_keeps_answering_next_to_a_hostile_gguf(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The hostile file in the models folder: listed, its inspection and load refused with the clear error, and the
    real model beside it still loads and answers."""
    from tests.conftest import link_tree

    models = tmp_path / "models"
    link_tree(smollm2_gguf.parent, models / "real")
    (models / "evil").mkdir()
    (models / "evil" / "evil.gguf").write_bytes(EVIL_GGUF + b"\0" * (1024 - len(EVIL_GGUF)))
    state = AppState(config=AppConfig(models_dir=models, user_data_dir=tmp_path / "data"))
    assert {"evil", "real"} <= set(state.models.names())
    with pytest.raises(ModelFormatError, match="more than the file can hold"):
        state.models.inspect("evil")
    with pytest.raises(ModelFormatError, match="more than the file can hold"):
        state.models.load("evil", confirm_memory=True)
    state.models.load("real", loader_settings={"n_ctx": 256}, confirm_memory=True)
    try:
        assert state.models.current_info.view.name == "real"
    finally:
        state.models.unload()


LOAD_CYCLES = """
import sys, psutil
from pathlib import Path
from webui.state import AppConfig, AppState
state = AppState(config=AppConfig(models_dir=Path(sys.argv[1]), user_data_dir=Path(sys.argv[2])))
for _ in range(20):
    state.models.load("real", loader="llama.cpp", loader_settings={"n_ctx": 256}, confirm_memory=True)
    state.models.unload()
    print(psutil.Process().memory_info().rss)
"""


def test_twenty_load_unload_cycles_do_not_leak(tmp_path: Path, smollm2_gguf: Path) -> None:
    """Resident memory after the 20th load/unload cycle within 20 MB of the second's (a fresh process)."""
    from tests.conftest import link_tree

    link_tree(smollm2_gguf.parent, tmp_path / "models" / "real")
    run = subprocess.run([sys.executable, "-c", LOAD_CYCLES, str(tmp_path / "models"), str(tmp_path / "data")],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    rss = [int(line) for line in run.stdout.split()]
    assert len(rss) == 20
    assert rss[-1] - rss[1] < 20 * 1024 * 1024, [r >> 20 for r in rss]
