"""Per-model settings on real model folders: save and restart, shipped pattern defaults, precedence, broken YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loaders.detect import detect
from loaders.errors import SettingsError
from loaders.settings import GPTQSettings, LlamaCppSettings, NativeGGUFSettings, TransformersSettings
from tests.conftest import link_tree
from tests.gptq_fixtures import smollm2_gptq
from webui.settings import ModelSettings, SettingsStore

HF_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct-GGUF"
CODELLAMA = "TheBloke_CodeLlama-13B-Instruct-GPTQ"


@pytest.fixture()
def codellama_dir(tmp_path: Path) -> Path:
    """A models folder holding a (SmolLM2) GPTQ model under a CodeLlama instruct name."""
    root = tmp_path / "models"
    link_tree(smollm2_gptq("main"), root / CODELLAMA)
    return root


def test_save_then_restart_gives_saved_values(models_dir: Path) -> None:
    saved = ModelSettings(
        loader="transformers",
        loader_settings={"dtype": "bfloat16", "device": "cpu", "max_memory_gib": {"cpu": 8}},
        template="alpaca",
        preset="Deterministic",
        context_length=2048,
    )
    assert SettingsStore(models_dir).save(HF_NAME, saved) == []
    after_restart = SettingsStore(models_dir).resolve(HF_NAME)
    assert after_restart.saved
    assert (after_restart.loader, after_restart.template, after_restart.preset) == ("transformers", "alpaca",
                                                                                   "Deterministic")
    assert after_restart.context_length == 2048
    assert after_restart.loader_settings == TransformersSettings(
        dtype="bfloat16", device="cpu", max_memory_gib={"cpu": 8}, context_length=2048
    )
    assert {k: after_restart.sources[k].label for k in ("dtype", "template", "context_length")} == dict.fromkeys(
        ("dtype", "template", "context_length"), "saved by you"
    )
    assert after_restart.sources["trust_remote_code"].layer == "default"
    stored = yaml.safe_load((models_dir / "config-user.yaml").read_text())
    assert stored[HF_NAME]["context_length"] == 2048
    assert sorted(p.name for p in models_dir.glob(".*")) == []  # no temporary file left behind


def test_saved_context_length_drives_gguf_n_ctx(models_dir: Path) -> None:
    store = SettingsStore(models_dir)
    detection = detect(models_dir / GGUF_NAME)
    before = store.resolve(GGUF_NAME, detection)
    assert before.context_length == detection.settings["n_ctx"]
    assert before.sources["n_ctx"].label == "from GGUF metadata"
    assert detection.has_chat_template
    assert before.template == "chatml" and before.sources["template"].layer == "pattern"  # the name matches .*smol
    store.save(GGUF_NAME, ModelSettings(loader=before.loader, loader_settings={"n_gpu_layers": 5}, context_length=1024))
    after = SettingsStore(models_dir).resolve(GGUF_NAME, detection)
    assert isinstance(after.loader_settings, LlamaCppSettings | NativeGGUFSettings)
    assert after.loader_settings.n_ctx == after.context_length == 1024
    assert after.loader_settings.n_gpu_layers == 5
    assert after.loader_settings.file == detection.settings["file"]
    assert after.sources["file"].layer == "detected"


def test_pattern_defaults_apply_to_codellama_instruct(codellama_dir: Path) -> None:
    resolved = SettingsStore(codellama_dir).resolve(CODELLAMA)
    assert resolved.loader == "gptq"
    assert resolved.template == "codellama-instruct"
    assert resolved.context_length == 16384
    assert resolved.loader_settings.context_length == 16384
    assert ".*codellama.*instruct" in resolved.patterns
    assert resolved.sources["template"].label == "from models/config.yaml (.*codellama.*instruct)"
    assert resolved.sources["context_length"].layer == "pattern"
    # what the files say stays: bits and group size come from the folder, not from the name
    assert (resolved.loader_settings.bits, resolved.loader_settings.group_size) == (4, 128)
    assert resolved.sources["bits"].label == "from config.json quantization_config"
    # the RoPE base default reaches the loaders that have the setting
    as_transformers = SettingsStore(codellama_dir).resolve(CODELLAMA, loader="transformers")
    assert as_transformers.loader_settings.rope_freq_base == 1e6
    assert as_transformers.sources["loader"].layer == "override"


def test_user_values_win_over_defaults_and_detection(codellama_dir: Path) -> None:
    store = SettingsStore(codellama_dir)
    store.save(CODELLAMA, ModelSettings(
        loader="gptq",
        loader_settings={"device": "cpu", "bits": 8, "dequantize_cache": "off"},
        template="llama-2-chat",
        context_length=4096,
    ))
    resolved = SettingsStore(codellama_dir).resolve(CODELLAMA)
    assert (resolved.template, resolved.context_length) == ("llama-2-chat", 4096)
    assert resolved.loader_settings == GPTQSettings(
        bits=4, group_size=128, desc_act=False, sym=True, checkpoint_format="gptq", weights_file="model.safetensors",
        device="cpu", dequantize_cache="off", context_length=4096,
    )
    assert resolved.sources["context_length"].label == "saved by you"
    assert resolved.sources["bits"].layer == "detected"  # a saved bits value never overrides the file


def test_to_model_settings_round_trip(codellama_dir: Path) -> None:
    store = SettingsStore(codellama_dir)
    first = store.resolve(CODELLAMA)
    store.save(CODELLAMA, first.to_model_settings())
    second = SettingsStore(codellama_dir).resolve(CODELLAMA)
    assert (second.loader_settings, second.template, second.context_length) == (
        first.loader_settings, first.template, first.context_length
    )
    assert second.sources["template"].label == "saved by you"


def test_broken_user_yaml_is_quarantined_and_reported(models_dir: Path) -> None:
    user = models_dir / "config-user.yaml"
    broken = f"{HF_NAME}:\n  loader: transformers\n  template: [alpaca\n"
    user.write_text(broken)
    store = SettingsStore(models_dir)
    resolved = store.resolve(HF_NAME)
    assert len(resolved.warnings) == 1
    assert "config-user.yaml is not valid YAML (line" in resolved.warnings[0]
    assert resolved.warnings == store.warnings
    assert not resolved.saved and resolved.loader == "transformers"
    (moved,) = models_dir.glob("config-user.broken-*.yaml")
    assert moved.read_text() == broken and moved.name in resolved.warnings[0]
    assert not user.exists()
    store.save(HF_NAME, ModelSettings(loader="transformers", context_length=1024))
    assert moved.read_text() == broken  # kept, never overwritten
    assert SettingsStore(models_dir).resolve(HF_NAME).context_length == 1024


def test_user_yaml_that_is_not_a_mapping_is_quarantined(models_dir: Path) -> None:
    (models_dir / "config-user.yaml").write_text("- just\n- a list\n")
    warnings = SettingsStore(models_dir).save(HF_NAME, ModelSettings(loader="transformers"))
    assert "should map model names to settings" in warnings[0]
    assert len(list(models_dir.glob("config-user.broken-*.yaml"))) == 1


def test_bad_values_in_an_entry_are_reported_and_skipped(models_dir: Path) -> None:
    (models_dir / "config-user.yaml").write_text(yaml.safe_dump({HF_NAME: {
        "loader": "transformers", "context_length": "long", "template": "alpaca",
        "loader_settings": {"dtype": 16, "device": "cpu", "warp_speed": True},
    }}))
    resolved = SettingsStore(models_dir).resolve(HF_NAME)
    assert resolved.template == "alpaca" and resolved.loader_settings.device == "cpu"
    assert resolved.context_length == 8192 and resolved.sources["context_length"].label == "from config.json"
    assert resolved.loader_settings.dtype == "auto"
    assert len(resolved.warnings) == 3
    assert any("context_length should be a positive whole number, not 'long'" in w for w in resolved.warnings)
    assert any("unknown setting 'warp_speed'" in w for w in resolved.warnings)


def test_broken_pattern_file_is_reported_not_moved(models_dir: Path) -> None:
    own = models_dir / "config.yaml"
    own.write_text(".*smol:\n  template: [chatml\n")
    resolved = SettingsStore(models_dir).resolve(HF_NAME)
    assert "per-model defaults are not applied" in resolved.warnings[0]
    assert resolved.template is None and resolved.patterns == []
    assert resolved.sources["template"].label == "the model's own (chat_template.jinja)"
    assert own.exists()


def test_models_dir_pattern_file_replaces_the_shipped_one(models_dir: Path) -> None:
    (models_dir / "config.yaml").write_text(".*smollm2:\n  template: zephyr\n  loader: gguf\n'(bad':\n  preset: x\n")
    resolved = SettingsStore(models_dir).resolve(HF_NAME)
    assert resolved.template == "zephyr" and resolved.patterns == [".*smollm2"]
    assert resolved.loader == "transformers"  # a name pattern never picks the loader
    assert any("loader is decided from the model's files" in w for w in resolved.warnings)
    assert any("not a valid regular expression" in w for w in resolved.warnings)


def test_saving_rejects_invalid_values(models_dir: Path) -> None:
    store = SettingsStore(models_dir)
    with pytest.raises(SettingsError, match="Unknown loader 'exllama'"):
        store.save(HF_NAME, ModelSettings(loader="exllama"))
    with pytest.raises(SettingsError, match="context_length should be a positive whole number"):
        store.save(HF_NAME, ModelSettings(loader="transformers", context_length=-1))
    assert not (models_dir / "config-user.yaml").exists()


def test_forget(models_dir: Path) -> None:
    store = SettingsStore(models_dir)
    store.save(HF_NAME, ModelSettings(loader="transformers", template="alpaca"))
    assert store.saved(HF_NAME).template == "alpaca"
    assert store.forget(HF_NAME) and not store.forget(HF_NAME)
    assert store.saved(HF_NAME) is None
    assert store.resolve(HF_NAME).sources["template"].layer == "pattern"


def test_saving_an_unknown_template_is_refused_with_the_known_names(models_dir: Path) -> None:
    store = SettingsStore(models_dir)
    with pytest.raises(SettingsError, match="unknown prompt template 'mistral-instruct'") as caught:
        store.save(HF_NAME, ModelSettings(loader="transformers", template="mistral-instruct"))
    assert "auto, model, alpaca" in str(caught.value) and "mistral" in str(caught.value)
    assert not (models_dir / "config-user.yaml").exists()
    for name in ("auto", "model", "llama-3-instruct", "Zephyr"):  # the registry matches names case-insensitively
        store.save(HF_NAME, ModelSettings(loader="transformers", template=name))
        assert store.saved(HF_NAME).template == name


def test_saved_template_is_checked_against_the_apps_templates_folder(models_dir: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "mine.yaml").write_text("template: '{{ messages[0].content }}'\n", encoding="utf-8")
    store = SettingsStore(models_dir, templates_dir=templates)
    store.save(HF_NAME, ModelSettings(loader="transformers", template="mine"))
    with pytest.raises(SettingsError, match="Choose one of: auto, model, mine."):
        store.save(HF_NAME, ModelSettings(loader="transformers", template="alpaca"))
    assert store.saved(HF_NAME).template == "mine"
