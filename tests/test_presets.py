"""Generation presets: shipped files, save / load / delete, malformed files reported without breaking the store."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from loaders.base import GenerationParams
from loaders.errors import PresetError
from webui.presets import PresetStore

SHIPPED = Path(__file__).resolve().parent.parent / "presets"


@pytest.fixture()
def store(tmp_path: Path) -> PresetStore:
    folder = tmp_path / "presets"
    shutil.copytree(SHIPPED, folder)
    return PresetStore(folder)


def test_shipped_presets_all_load() -> None:
    shipped = PresetStore(SHIPPED)
    names = shipped.names()
    assert len(names) >= 6 and "Default" in names and "Deterministic" in names
    loaded = {name: shipped.load(name) for name in names}
    assert loaded["Default"] == GenerationParams()
    assert loaded["Deterministic"].do_sample is False
    assert len({repr(params) for params in loaded.values()}) == len(names), "two presets are the same"


def test_missing_keys_take_the_defaults(store: PresetStore) -> None:
    params = store.load("Min-P")
    assert params.min_p == 0.05 and params.top_k == 0
    assert params.max_new_tokens == GenerationParams().max_new_tokens
    assert params.truncation_length == GenerationParams().truncation_length


def test_save_load_roundtrip_writes_only_changed_values(store: PresetStore) -> None:
    params = replace(GenerationParams(), temperature=1.25, top_k=0, do_sample=True, stop=("\nUser:", "###"), seed=7)
    path = store.save("My preset", params)
    assert path.name == "My preset.yaml"
    assert store.load("My preset") == params
    assert "My preset" in store.names()
    text = path.read_text(encoding="utf-8")
    assert "temperature: 1.25" in text and "top_p" not in text  # top_p is at its default
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"


def test_save_overwrites_and_delete_removes(store: PresetStore) -> None:
    store.save("x", replace(GenerationParams(), temperature=0.2))
    store.save("x", replace(GenerationParams(), temperature=0.3))
    assert store.load("x").temperature == 0.3
    store.delete("x")
    assert "x" not in store.names()
    with pytest.raises(PresetError, match="No preset named 'x'"):
        store.load("x")
    with pytest.raises(PresetError):
        store.delete("x")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("temperature: [0.7\n", "cannot be read"),  # malformed YAML
        ("- temperature\n- 0.7\n", "must hold a mapping"),
        ("temprature: 0.7\n", "unknown parameter"),
        ("top_k: high\n", "'top_k' must be int"),
        ("do_sample: 1\n", "'do_sample' must be bool"),
        ("max_new_tokens: 1.5\n", "'max_new_tokens' must be int"),
        ("stop: \"###\"\n", "'stop' must be a list of strings"),
        ("top_p: 1.5\n", "'top_p' must be between"),
        ("temperature: -1\n", "'temperature' must be at least"),
    ],
)
def test_malformed_preset_is_set_aside_with_a_warning_and_store_keeps_working(
    store: PresetStore, content: str, problem: str
) -> None:
    (store.directory / "Broken.yaml").write_text(content, encoding="utf-8")
    params, warning = store.load_with_warning("Broken")
    assert params == GenerationParams()  # the built-in defaults stand in for it
    assert warning is not None and problem in warning and "Broken.yaml" in warning
    (kept,) = store.directory.glob("Broken.broken-*.yaml")
    assert kept.read_text(encoding="utf-8") == content and kept.name in warning
    assert "Broken" not in store.names() and store.warnings == [warning]
    assert store.load("Deterministic").do_sample is False
    store.save("After", replace(GenerationParams(), top_p=0.5))
    assert store.load("After").top_p == 0.5
    store.save("Broken", replace(GenerationParams(), top_k=7))  # saving the name again replaces the stand-in
    assert store.load_with_warning("Broken") == (replace(GenerationParams(), top_k=7), None)


def test_integers_are_accepted_for_float_fields(store: PresetStore) -> None:
    (store.directory / "Ints.yaml").write_text("temperature: 1\nrepetition_penalty: 2\n", encoding="utf-8")
    params = store.load("Ints")
    assert params.temperature == 1.0 and isinstance(params.temperature, float)


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "", "   ", ".hidden", "c:d"])
def test_unsafe_names_are_refused(store: PresetStore, name: str) -> None:
    with pytest.raises(PresetError):
        store.save(name, GenerationParams())
    with pytest.raises(PresetError):
        store.load(name)
    assert not (store.directory.parent / "evil.yaml").exists()


def test_out_of_range_values_are_not_saved(store: PresetStore) -> None:
    with pytest.raises(PresetError, match="top_p"):
        store.save("bad", replace(GenerationParams(), top_p=2.0))
    assert "bad" not in store.names()


def test_missing_folder_lists_nothing(tmp_path: Path) -> None:
    assert PresetStore(tmp_path / "nowhere").names() == []
