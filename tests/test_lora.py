"""LoRA adapters on real SmolLM2: peft-made adapters applied by Corral give what peft's own merged model gives (the
Transformers loader, several adapters with scales, the GPTQ 8-bit branch, the native GGUF loader), llama.cpp applies
the same adapter as a GGUF LoRA, adapters that do not fit are refused by name, and the choice survives a restart."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app import build_parser, lora_choices
from loaders.base import GenerationParams
from loaders.errors import ModelNotFoundError, SettingsError, UnsupportedModelError
from loaders.files.adapter import list_adapters, read_adapter
from loaders.lora import AdapterChoice
from tests import gptq_fixtures, lora_fixtures
from tests.conftest import link_tree
from webui.api import create_app
from webui.config import AppConfig
from webui.engine import generate
from webui.state import AppState

HF, GGUF, GPTQ = "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct-GGUF", "SmolLM2-GPTQ-8bit"
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = GenerationParams(do_sample=False, max_new_tokens=12)
LLAMA_CPP_SAME = 8  # tokens llama.cpp (Q4_1 x Q8 activations) must agree on with the float model


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path, smollm2_gguf: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    models, loras = root / "models", root / "loras"
    link_tree(smollm2_hf, models / HF)
    link_tree(smollm2_gguf.parent, models / GGUF)
    link_tree(gptq_fixtures.smollm2_gptq("gptq-8bit--1g-actorder_True"), models / GPTQ)
    for name in lora_fixtures.SPECS:
        shutil.copytree(lora_fixtures.smollm2_adapter(name), loras / f"smollm2-{name}")
    shutil.copytree(lora_fixtures.gpt2_adapter(), loras / "gpt2-lora")
    shutil.copytree(lora_fixtures.small_llama_adapter(), loras / "llama7b-lora")
    return models, loras


@pytest.fixture(scope="module")
def state(folders: tuple[Path, Path]) -> AppState:
    models, loras = folders
    app = AppState(config=AppConfig(models_dir=models, loras_dir=loras, user_data_dir=models.parent / "data"))
    yield app
    app.models.unload()


def reply(app: AppState) -> str:
    return reply_ids(app)[0]


def reply_ids(app: AppState) -> tuple[str, list[int]]:
    generation = generate(app.models.current, PROMPT, GREEDY, cancel=threading.Event())
    return "".join(generation), generation.token_ids


def merged_model(adapters: list[tuple[str, float]]) -> torch.nn.Module:
    """peft's own model: the adapters merged into a float32 copy of SmolLM2."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests import realmodel

    model = AutoModelForCausalLM.from_pretrained(realmodel.smollm2_hf(), dtype=torch.float32)
    names = [f"a{i}" for i in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model, lora_fixtures.smollm2_adapter(adapters[0][0]), adapter_name=names[0])
    for name, (adapter, _) in zip(names[1:], adapters[1:], strict=True):
        peft_model.load_adapter(lora_fixtures.smollm2_adapter(adapter), adapter_name=name)
    peft_model.add_weighted_adapter(names, [scale for _, scale in adapters], "mix", combination_type="cat")
    peft_model.set_adapter("mix")
    return peft_model.merge_and_unload()


@pytest.fixture(scope="module")
def merged_mlp() -> torch.nn.Module:
    return merged_model([("mlp", 1.0)])


def prompt_ids() -> torch.Tensor:
    from transformers import AutoTokenizer

    from tests import realmodel

    return AutoTokenizer.from_pretrained(realmodel.smollm2_hf())(PROMPT, return_tensors="pt",
                                                                 add_special_tokens=False).input_ids  # fmt: skip


def greedy_of(merged: torch.nn.Module) -> tuple[str, list[int]]:
    """peft's merged model's greedy reply (`generate`), text and ids."""
    from transformers import AutoTokenizer

    from tests import realmodel

    ids = prompt_ids()
    out = merged.generate(ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False)[0, ids.shape[1] :].tolist()
    text = AutoTokenizer.from_pretrained(realmodel.smollm2_hf()).decode(out, skip_special_tokens=True)
    return text, out


def merged_reference(adapters: list[tuple[str, float]]) -> str:
    return greedy_of(merged_model(adapters))[0]


# --- the Transformers loader ---------------------------------------------------------------------------------------


def test_adapter_on_transformers_equals_peft_merged(state: AppState, merged_mlp: torch.nn.Module) -> None:
    state.models.load(HF, loader="transformers", loras=[AdapterChoice("smollm2-mlp")])
    with_adapter = reply(state)
    assert with_adapter == greedy_of(merged_mlp)[0]
    state.models.set_adapters([])
    assert reply(state) != with_adapter  # the adapter changes the reply, and removing it gives the base back
    assert state.models.current_info.adapters.active == ()


def ensure_transformers(app: AppState) -> None:
    """The Transformers model loaded (kept from the test before when it is)."""
    info = app.models.current_info
    if info is None or (info.view.name, info.model.loader) != (HF, "transformers"):
        app.models.load(HF, loader="transformers", loras=[])


def test_two_adapters_with_scales_equal_peft_weighted_sum(state: AppState) -> None:
    ensure_transformers(state)
    active = state.models.set_adapters([AdapterChoice("smollm2-attn", 0.5), AdapterChoice("smollm2-mlp", 1.0)])
    assert [(c.name, c.scale) for c in active] == [("smollm2-attn", 0.5), ("smollm2-mlp", 1.0)]
    assert reply(state) == merged_reference([("attn", 0.5), ("mlp", 1.0)])
    api = TestClient(create_app(state), base_url="http://127.0.0.1")
    assert api.get("/v1/internal/model/info").json()["loras"] == [{"name": "smollm2-attn", "scale": 0.5},
                                                                  {"name": "smollm2-mlp", "scale": 1.0}]  # fmt: skip
    listed = {item["name"]: item["fits"] for item in api.get("/v1/internal/lora/list").json()["loras"]}
    assert listed == {"gpt2-lora": False, "llama7b-lora": False, "smollm2-attn": True, "smollm2-mlp": True}


def test_adapters_that_do_not_fit_are_refused_by_name(state: AppState) -> None:
    ensure_transformers(state)
    with pytest.raises(UnsupportedModelError) as other_arch:
        state.models.set_adapters([AdapterChoice("gpt2-lora")])
    text = str(other_arch.value)
    assert "gpt2-lora" in text and "openai-community/gpt2" in text and "GPT2LMHeadModel" in text
    assert HF in text and "LlamaForCausalLM" in text and "transformer.h.0.attn.c_attn" in text
    with pytest.raises(UnsupportedModelError, match=r"llama7b-lora.*meta-llama/Llama-2-7b-hf.*576 inputs .* 64 ->"):
        state.models.set_adapters([AdapterChoice("llama7b-lora")])
    fits = {f.name: f.fits for f in state.models.adapter_fits()}
    assert fits == {"gpt2-lora": False, "llama7b-lora": False, "smollm2-attn": True, "smollm2-mlp": True}
    with pytest.raises(ModelNotFoundError, match="no-such-adapter"):
        state.models.set_adapters([AdapterChoice("no-such-adapter")])
    with pytest.raises(SettingsError, match="scale"):
        AdapterChoice("smollm2-mlp", float("nan"))


def test_adapters_survive_save_restart_reload(state: AppState, folders: tuple[Path, Path]) -> None:
    state.models.load(HF, loader="transformers", loras=[AdapterChoice("smollm2-mlp", 0.75)])
    expected = reply(state)
    state.models.save_settings(HF, "transformers", {}, template=None, preset=None)
    state.models.unload()
    models, loras = folders
    restarted = AppState(config=AppConfig(models_dir=models, loras_dir=loras, user_data_dir=models.parent / "data"))
    try:
        info = restarted.models.load(HF)
        assert info.adapters.active == (AdapterChoice("smollm2-mlp", 0.75),) and not info.warnings
        assert reply(restarted) == expected
        restarted.models.reload()  # the adapters applied now come back with the reloaded model
        assert restarted.models.current_info.adapters.active == (AdapterChoice("smollm2-mlp", 0.75),)
    finally:
        restarted.models.unload()
        restarted.settings.forget(HF)


# --- quantized models: GPTQ (8-bit branch) and the native GGUF loader -------------------------------------------


def test_adapter_on_gptq_8bit_matches_peft_on_its_dequantized_weights(state: AppState) -> None:
    from transformers import AutoModelForCausalLM

    from kernels.gptq import GPTQLinear
    from tests import realmodel

    # fp32 weights dequantized once (the CPU int8 kernel computes in bf16, tested in tests/test_cpu_kernels.py): the
    # comparison below tests the adapter, not the kernel's rounding
    info = state.models.load(GPTQ, loader="gptq", loader_settings={"dtype": "float32", "dequantize_cache": "on"},
                             loras=[AdapterChoice("smollm2-mlp")])  # fmt: skip
    module = info.model.module
    assert any(isinstance(m.get_base_layer(), GPTQLinear) for m in module.modules() if hasattr(m, "get_base_layer"))
    ids = torch.tensor([info.model.tokenizer.encode(PROMPT, add_bos=False)])
    with torch.inference_mode():
        ours = module(input_ids=ids).logits[0, -4:].float()
    # peft's reference on the very weights the GPTQ layers hold (dequantized), merged
    reference = AutoModelForCausalLM.from_pretrained(realmodel.smollm2_hf(), dtype=torch.float32)
    with torch.no_grad():
        for name, layer in module.named_modules():
            if isinstance(layer, GPTQLinear):  # peft wrapped the adapted ones: `...down_proj.base_layer`
                weight = _weight_of(layer).t()
                reference.get_submodule(name.removesuffix(".base_layer")).weight.copy_(weight)
    from peft import PeftModel

    merged = PeftModel.from_pretrained(reference, lora_fixtures.smollm2_adapter("mlp")).merge_and_unload()
    with torch.inference_mode():
        expected = merged(input_ids=ids).logits[0, -4:].float()
    # fp16 tolerance: the GPTQ branch keeps fp16 embeddings and scales; the float reference computes in fp32
    assert torch.allclose(ours, expected, atol=5e-2, rtol=1e-2), (ours - expected).abs().max()
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))


def test_adapter_on_native_gguf_matches_peft_merged(state: AppState, merged_mlp: torch.nn.Module) -> None:
    # fp32 blocks dequantized once (the CPU int4 kernel computes in bf16, tested in tests/test_cpu_kernels.py)
    info = state.models.load(GGUF, loader="gguf", loader_settings={"dtype": "float32", "dequantize_cache": "on"},
                             loras=[AdapterChoice("smollm2-mlp")])  # fmt: skip
    ids = prompt_ids()
    with torch.inference_mode():  # one forward: the GGUF blocks are the very weights the float folder was made from
        ours = info.model.module(input_ids=ids).logits[0, -4:]
        expected = merged_mlp(input_ids=ids).logits[0, -4:]
    assert torch.allclose(ours, expected, atol=2e-3, rtol=1e-3), (ours - expected).abs().max()


# --- llama.cpp: GGUF LoRA ---------------------------------------------------------------------------------------


def test_gguf_lora_through_llama_cpp_changes_the_reply_as_the_adapter_does(
    state: AppState, folders: tuple[Path, Path], merged_mlp: torch.nn.Module
) -> None:
    pytest.importorskip("llama_cpp")
    _, loras = folders
    info = state.models.load(GGUF, loader="llama.cpp", loras=[])
    base = reply(state)
    state.models.set_adapters([AdapterChoice("smollm2-mlp")])  # PEFT adapter: written as a GGUF LoRA first
    converted = next((loras / "smollm2-mlp").glob(".corral-lora-llama-*.gguf"))
    with_adapter, ids = reply_ids(state)
    assert with_adapter != base
    # the words of peft's merged float model: llama.cpp multiplies Q4_1 blocks by 8-bit activations, so the two
    # agree token for token at the start and may part later where two tokens are nearly tied
    assert ids[:LLAMA_CPP_SAME] == greedy_of(merged_mlp)[1][:LLAMA_CPP_SAME], (with_adapter, greedy_of(merged_mlp))
    # the converted file is a real GGUF LoRA: as an adapter of its own, llama.cpp applies it the same way
    shutil.copy(converted, loras / "smollm2-mlp.gguf")
    adapter = read_adapter(loras / "smollm2-mlp.gguf")
    assert (adapter.format, adapter.architecture, adapter.alpha) == ("gguf", "llama", 4.0)
    state.models.set_adapters([AdapterChoice("smollm2-mlp.gguf")])
    assert reply(state) == with_adapter
    state.models.set_adapters([])
    assert reply(state) == base  # removed: the prompt cache computed with the adapter is not reused
    assert info.adapters is state.models.current_info.adapters
    (loras / "smollm2-mlp.gguf").unlink()


def test_gguf_lora_is_refused_on_a_pytorch_loader(state: AppState, folders: tuple[Path, Path]) -> None:
    pytest.importorskip("llama_cpp")
    _, loras = folders
    converted = next((loras / "smollm2-mlp").glob(".corral-lora-llama-*.gguf"), None)
    if converted is None:
        pytest.skip("needs the GGUF LoRA converted by the llama.cpp test")
    shutil.copy(converted, loras / "mlp.gguf")
    try:
        ensure_transformers(state)
        with pytest.raises(UnsupportedModelError, match="mlp.gguf is a GGUF LoRA: it runs on the llama.cpp loader"):
            state.models.set_adapters([AdapterChoice("mlp.gguf")])
    finally:
        (loras / "mlp.gguf").unlink()


def test_list_adapters_sees_folders_and_gguf_files(folders: tuple[Path, Path]) -> None:
    _, loras = folders
    assert list_adapters(loras) == ["gpt2-lora", "llama7b-lora", "smollm2-attn", "smollm2-mlp"]
    attn = read_adapter(loras / "smollm2-attn")
    assert (attn.rank, attn.alpha, attn.architecture) == (8, 16.0, "LlamaForCausalLM")
    assert len(attn.pairs) == 30 * 4 and attn.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_command_line_adapters_and_scales() -> None:
    parser = build_parser()

    def choices(*argv: str):
        return lora_choices(parser, parser.parse_args(list(argv)))

    assert choices("--model", "M", "--lora", "a", "b", "--lora-scale", "0.5", "1") == (AdapterChoice("a", 0.5),
                                                                                        AdapterChoice("b", 1.0))
    assert choices("--model", "M", "--lora", "a") == (AdapterChoice("a", 1.0),)
    assert choices("--model", "M") is None  # the adapters saved for the model
    for argv in (("--model", "M", "--lora", "a", "b", "--lora-scale", "1"), ("--lora", "a"),
                 ("--model", "M", "--lora-scale", "1"), ("--model", "M", "--lora", "a", "--lora-scale", "99")):
        with pytest.raises(SystemExit):
            choices(*argv)


def _weight_of(layer: torch.nn.Module) -> torch.Tensor:
    """[in, out]: the weight a quantized Linear multiplies by, in whatever layout it runs (integer kernel, cache...),
    read through its own forward on the identity."""
    with torch.inference_mode():
        eye = torch.eye(layer.in_features, dtype=torch.float32)
        out = layer(eye).float()
        return out - layer.bias.float() if layer.bias is not None else out
