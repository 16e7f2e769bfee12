"""Broken user files never block the app: a `config-user.yaml` or preset that cannot be read, decoded or parsed is
moved aside byte for byte, reported, and the app goes on with defaults (model loads, API requests)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import openai
import pytest

from loaders.base import GenerationParams
from loaders.errors import PresetError, SettingsError
from tests.conftest import link_tree
from webui.api import ApiServer
from webui.presets import PresetStore
from webui.settings import ModelSettings, SettingsStore
from webui.state import AppConfig, AppState

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct-GGUF"
NOT_UTF8 = b"SmolLM2-135M-Instruct:\n  template: caf\xe9\n"  # Latin-1, as an editor on Windows may save it
BROKEN_YAML = b"temperature: [0.7\n"


def broken_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.broken-*{path.suffix}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- config-user.yaml ---------------------------------------------------------------------------------------------


def test_non_utf8_config_user_yaml_is_set_aside_byte_for_byte_and_reported(models_dir: Path) -> None:
    user = models_dir / "config-user.yaml"
    user.write_bytes(NOT_UTF8)
    store = SettingsStore(models_dir)
    resolved = store.resolve("SmolLM2-135M-Instruct")
    assert not resolved.saved and not user.exists()
    (kept,) = broken_copies(user)
    assert kept.read_bytes() == NOT_UTF8  # the user's content, untouched
    assert any("not UTF-8" in w and kept.name in w for w in resolved.warnings)
    assert store.warnings == resolved.warnings
    # the store works again at once: a save starts a fresh file, the broken copy stays
    store.save("SmolLM2-135M-Instruct", ModelSettings(loader="transformers", context_length=1024))
    assert SettingsStore(models_dir).resolve("SmolLM2-135M-Instruct").saved
    assert broken_copies(user) == [kept]


def test_saved_reports_the_problem_too(models_dir: Path) -> None:
    (models_dir / "config-user.yaml").write_bytes(NOT_UTF8)
    store = SettingsStore(models_dir)
    assert store.saved("SmolLM2-135M-Instruct") is None
    assert any("not UTF-8" in w for w in store.warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_user_yaml_is_set_aside(models_dir: Path) -> None:
    user = models_dir / "config-user.yaml"
    user.write_bytes(b"SmolLM2-135M-Instruct: {context_length: 1024}\n")
    user.chmod(0)
    resolved = SettingsStore(models_dir).resolve("SmolLM2-135M-Instruct")
    assert any("cannot be read" in w for w in resolved.warnings)
    assert not user.exists() and len(broken_copies(user)) == 1


def test_a_file_that_cannot_be_moved_aside_is_warned_about_and_never_overwritten(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = models_dir / "config-user.yaml"
    user.write_bytes(NOT_UTF8)

    def refuse(path: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("webui.fileio.quarantine", refuse)
    store = SettingsStore(models_dir)
    resolved = store.resolve("SmolLM2-135M-Instruct")
    assert any("cannot be moved aside" in w for w in resolved.warnings)
    with pytest.raises(SettingsError, match="Cannot save"):
        store.save("SmolLM2-135M-Instruct", ModelSettings(loader="transformers"))
    assert user.read_bytes() == NOT_UTF8


def test_a_model_loads_with_a_non_utf8_config_user_yaml(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = tmp_path / "models"
    link_tree(smollm2_gguf.parent, models / MODEL)
    user = models / "config-user.yaml"
    user.write_bytes(b"SmolLM2-135M-Instruct-GGUF:\n  preset: D\xe9faut\n")
    state = AppState(config=AppConfig(models_dir=models))
    try:
        state.models.load(MODEL, loader_settings={"n_ctx": 512}, confirm_memory=True)
        assert state.models.current is not None
    finally:
        state.models.unload()
    assert not user.exists() and broken_copies(user)[0].read_bytes().endswith(b"D\xe9faut\n")
    assert any("not UTF-8" in w for w in state.settings.warnings)


# --- presets -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def presets(tmp_path: Path) -> Path:
    folder = tmp_path / "presets"
    shutil.copytree(ROOT / "presets", folder)
    return folder


@pytest.mark.parametrize("content", [BROKEN_YAML, b"temperature: 0.7 # caf\xe9\n", b"top_p: 1.5\n", b"- a\n"])
def test_a_broken_default_preset_falls_back_to_the_defaults_and_is_set_aside(presets: Path, content: bytes) -> None:
    default = presets / "Default.yaml"
    default.write_bytes(content)
    store = PresetStore(presets)
    params, warning = store.load_with_warning("Default")
    assert params == GenerationParams() and warning is not None and "Default.yaml" in warning
    (kept,) = broken_copies(default)
    assert kept.read_bytes() == content and kept.name in warning
    assert store.warnings == [warning]
    assert "Default" not in store.names() and not any("broken" in name for name in store.names())
    # later loads (and a new store, as after a restart) keep using the defaults, and say why
    again, later = PresetStore(presets).load_with_warning("Default")
    assert again == GenerationParams() and later is not None and kept.name in later
    assert store.load("Default") == GenerationParams() and len(store.warnings) == 2  # each problem reported once
    assert store.load("Deterministic").do_sample is False  # the other presets are untouched


def test_a_missing_preset_with_no_broken_copy_is_still_an_error(presets: Path) -> None:
    with pytest.raises(PresetError, match="No preset named 'Nope'"):
        PresetStore(presets).load("Nope")


def test_api_requests_work_with_a_broken_default_preset(tmp_path: Path, smollm2_gguf: Path, presets: Path) -> None:
    models = tmp_path / "models"
    link_tree(smollm2_gguf.parent, models / MODEL)
    default = presets / "Default.yaml"
    default.write_bytes(b"max_new_tokens: 10\ntemperature: \xff\xfe\n")
    state = AppState(config=AppConfig(models_dir=models, presets_dir=presets))
    state.models.load(MODEL, loader_settings={"n_ctx": 512}, confirm_memory=True)
    api = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="-", max_retries=0, timeout=120)
        for _ in range(2):  # the first request sets the file aside, the second finds it gone
            reply = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=2, temperature=0)
            assert reply.usage.completion_tokens >= 1
    finally:
        api.stop()
        state.models.unload()
    (kept,) = broken_copies(default)
    assert kept.read_bytes() == b"max_new_tokens: 10\ntemperature: \xff\xfe\n"
    assert any("not UTF-8" in w for w in state.presets.warnings)
