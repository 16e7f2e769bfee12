"""The `parallel` setting on the SmolLM2 files (no model is loaded): the plan's default from free memory, an explicit
value, the bounds, one KV cache per slot in the estimate, the value saved per model, and `--parallel`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app import build_parser, build_state
from loaders.errors import SettingsError
from loaders.files import read_model_files
from loaders.hardware import fake
from loaders.plan import AUTO_MAX_SLOTS, plan_load
from loaders.settings import settings_for
from webui.estimate import estimate_plan
from webui.model_gate import ModelGate
from webui.model_service import ModelService
from webui.settings import ModelSettings, SettingsStore
from webui.state import AppConfig

GGUF = "SmolLM2-135M-Instruct-GGUF"


def test_the_plan_picks_slots_from_free_memory(smollm2_gguf: Path, smollm2_hf: Path) -> None:
    files = read_model_files(smollm2_gguf)
    settings = settings_for("llama.cpp", {"n_ctx": 4096})
    assert plan_load("llama.cpp", files, settings, fake(ram_gib=32)).slots == AUTO_MAX_SLOTS
    per_slot = files.shape.kv_cache_bytes(4096, 2)
    weights = files.gguf.size

    def with_room(kv_caches: float) -> int:
        hw = replace(fake(ram_gib=32), ram_available=int(weights + kv_caches * per_slot))
        return plan_load("llama.cpp", files, settings, hw).slots

    assert with_room(3.5) == 1  # the slots' caches take at most a quarter of what the weights leave
    assert with_room(8.5) == 2
    # The PyTorch backends batch too (loaders/batching.py): an explicit value is theirs as well.
    hf = plan_load("transformers", read_model_files(smollm2_hf), settings_for("transformers", {"parallel": 3}),
                   fake(ram_gib=1))
    assert hf.slots == 3 and "3 requests at once" in hf.describe()


def test_an_explicit_value_is_kept_and_bounded(smollm2_gguf: Path) -> None:
    files = read_model_files(smollm2_gguf)
    plan = plan_load("llama.cpp", files, settings_for("llama.cpp", {"n_ctx": 512, "parallel": 8}), fake(ram_gib=1))
    assert plan.slots == 8 and "8 requests at once" in plan.describe()
    one = plan_load("llama.cpp", files, settings_for("llama.cpp", {"n_ctx": 512, "parallel": 1}), fake(ram_gib=1))
    assert "at once" not in one.describe()
    # One KV cache of the full context per slot; nothing else in the estimate depends on the slots.
    eight, single = estimate_plan(plan).parts["ram"], estimate_plan(one).parts["ram"]
    assert eight["kv_cache"] == 8 * single["kv_cache"] and eight["weights"] == single["weights"]
    for bad in (-1, 65, True):
        with pytest.raises(SettingsError, match="parallel must be a whole number from 0"):
            plan_load("llama.cpp", files, settings_for("llama.cpp", {"parallel": bad}), fake(ram_gib=1))


def test_saved_per_model_and_a_bad_saved_value_is_ignored(models_dir: Path) -> None:
    store = SettingsStore(models_dir)
    store.save(GGUF, ModelSettings("llama.cpp", {"parallel": 6}))
    resolved = SettingsStore(models_dir).resolve(GGUF)
    assert resolved.loader_settings.parallel == 6 and str(resolved.sources["parallel"]) == "saved by you"
    (models_dir / "config-user.yaml").write_text(f"{GGUF}:\n  loader: llama.cpp\n  loader_settings: {{parallel: -2}}\n")
    resolved = SettingsStore(models_dir).resolve(GGUF)
    assert resolved.loader_settings.parallel == 0
    assert any("parallel must be a whole number" in warning for warning in resolved.warnings)


def test_the_flag_wins_over_the_saved_value_and_a_load_override_over_the_flag(models_dir: Path) -> None:
    SettingsStore(models_dir).save(GGUF, ModelSettings("llama.cpp", {"parallel": 6}))
    config = AppConfig(models_dir=models_dir, parallel=3)
    service = ModelService(config, SettingsStore(models_dir), ModelGate())
    view = service.inspect(GGUF)
    assert view.resolved.loader_settings.parallel == 3 and view.plan.slots == 3
    assert str(view.resolved.sources["parallel"]) == "set at start: --parallel"
    assert service.inspect(GGUF, loader_settings={"parallel": 2}).plan.slots == 2


def test_the_parallel_flag(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--parallel", "5", "--models-dir", str(tmp_path)])
    assert build_state(args).config.parallel == 5
    assert build_state(build_parser().parse_args(["--models-dir", str(tmp_path)])).config.parallel is None
    with pytest.raises(SystemExit, match="--parallel takes a whole number from 1 to 64"):
        build_state(build_parser().parse_args(["--parallel", "0"]))
