"""The CPU parts of the load plans: the compute dtype by CPU features, how each quantized Linear is held (integer
kernels, dequantized cache, per call), what `describe()` shows, and the estimator pricing the same layouts.
Headers and configs only: nothing is loaded here."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from kernels import cpu_layout
from loaders.errors import SettingsError
from loaders.files import read_model_files
from loaders.hardware import fake
from loaders.plan import plan_load
from loaders.settings import settings_for
from tests import gptq_fixtures
from tests.test_estimate import LLAMA2_13B, write_q4_k_m_header
from webui import estimate as E

BF16_CPU, PLAIN_CPU = fake(ram_gib=32, cpu_bf16=True), fake(ram_gib=32)


@cache
def _files(path: Path):
    return read_model_files(path)  # a GGUF's header (its tokenizer) takes seconds to parse: once per file


def _plan(loader: str, path: Path, hw=BF16_CPU, **values):
    return plan_load(loader, _files(path), settings_for(loader, values), hw)


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_q4_k_m_header(tmp_path_factory.mktemp("gguf") / "llama-2-13b.Q4_K_M.gguf", **LLAMA2_13B)


def test_bf16_where_the_cpu_has_it(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    gptq = gptq_fixtures.smollm2_gptq("main")
    for loader, path in (("transformers", smollm2_hf), ("gptq", gptq), ("gguf", smollm2_gguf)):
        assert _plan(loader, path).dtype == "bfloat16", loader
        assert _plan(loader, path, PLAIN_CPU).dtype == "float32", loader
        assert _plan(loader, path, dtype="float32").dtype == "float32", loader
    assert "in bfloat16" in _plan("transformers", smollm2_hf).describe()


def test_native_gguf_layouts(smollm2_gguf: Path) -> None:
    plan = _plan("gguf", smollm2_gguf)
    assert plan.integer_kernels and plan.weight_cache == "dequantized cache"
    assert plan.weight_layouts() == {"Q4_1": ("int4",), "Q8_0": ("dequantized cache",)}  # Q8_0: the tied head
    assert plan.weight_summary() == "dequantized cache, int4"
    assert "Q4_1 in the int4 kernel" in plan.describe() and "Q8_0 dequantized once" in plan.describe()
    tight = _plan("gguf", smollm2_gguf, fake(ram_gib=0.05, cpu_bf16=True))  # 50 MB free: no room for a cache
    assert tight.weight_layouts() == {"Q4_1": ("int4",), "Q8_0": ("per-call",)}
    assert _plan("gguf", smollm2_gguf, dequantize_cache="off").weight_summary() == "per-call"
    assert _plan("gguf", smollm2_gguf, dequantize_cache="on").weight_summary() == "dequantized cache"
    with pytest.raises(SettingsError, match="dequantize_cache"):
        _plan("gguf", smollm2_gguf, dequantize_cache="maybe")


def test_k_quant_layouts_and_prices(q4_k_m: Path) -> None:
    plan = _plan("gguf", q4_k_m, fake(ram_gib=64, cpu_bf16=True))
    assert plan.weight_layouts() == {"Q4_K": ("int4",), "Q6_K": ("dequantized cache",)}
    held = E.held_on_cpu(plan)
    stored = E.weights_of(plan.files)
    header = {t.name: t for t in plan.files.header.tensors}
    by_name = {t.name: t.nbytes for t in held.tensors}
    q = header["blk.0.attn_q.weight"]  # Q4_K 5120 x 5120: 144 bytes per 256 -> int4 + a bf16 pair per 32
    assert by_name["blk.0.attn_q.weight"] == cpu_layout.int4_bytes(5120, 5120, 32) > q.nbytes
    assert by_name["output.weight"] == 32000 * 5120 * 2  # the Q6_K head, dequantized to bf16 once
    assert held.embed_bytes() == stored.embed_bytes()  # the embedding keeps its blocks (rows are looked up)
    est = E.estimate_plan(plan)
    assert est.parts["ram"]["weights"] == held.total


def test_gptq_layouts(q4_k_m: Path) -> None:
    main = _plan("gptq", gptq_fixtures.smollm2_gptq("main"))
    assert (main.integer_kernels, main.weight_layouts()) == (True, {"GPTQ 4-bit": ("int4",)})
    assert "GPTQ 4-bit in the int4 kernel" in main.describe()
    eight = _plan("gptq", gptq_fixtures.smollm2_gptq("gptq-8bit--1g-actorder_True"))
    assert eight.weight_layouts() == {"GPTQ 8-bit": ("int8",)}
    assert _plan("gptq", gptq_fixtures.smollm2_gptq("main"), dequantize_cache="on").weight_summary() == \
        "dequantized cache"  # fmt: skip
    gpu = _plan("gptq", gptq_fixtures.smollm2_gptq("main"), fake(ram_gib=32, gpu_gib=(24,)))
    assert not gpu.integer_kernels  # CUDA: Triton (or the GPU's cache / per-call), never the CPU kernels


def test_estimate_prices_the_held_gptq_weights() -> None:
    plan = _plan("gptq", gptq_fixtures.smollm2_gptq("main"))
    shape, gptq = plan.files.shape, plan.files.gptq
    linears = sum(cpu_layout.int4_bytes(n_out, n_in, cpu_layout.int4_group(n_in, gptq.group_size))
                  for _, n_in, n_out in shape.linears()) * shape.n_layers  # fmt: skip
    held = E.held_on_cpu(plan)
    assert sum(t.nbytes for t in held.tensors if t.name.endswith(".held")) == linears
    est = E.estimate_plan(plan)
    float_weights = shape.linear_params() * 2 + shape.vocab * shape.hidden * 2  # the bf16 model's weights
    assert est.parts["ram"]["weights"] < float_weights  # GPTQ 4-bit held below the bf16 model's size
    assert est.loading["ram"] == E.weights_of(plan.files).total  # the files are read before conversion


def test_transformers_cast_is_priced_as_loading(smollm2_hf: Path) -> None:
    cast = E.estimate_plan(_plan("transformers", smollm2_hf, context_length=1024))  # the fp32 file loaded in bf16
    kept = E.estimate_plan(_plan("transformers", smollm2_hf, context_length=1024, dtype="float32"))
    assert cast.loading["ram"] == E.weights_of(_files(smollm2_hf)).total
    assert kept.loading == {} and kept.peak_ram == kept.ram
    assert cast.peak_ram == cast.ram_at_load + cast.loading["ram"] > cast.ram
    assert cast.fit(fake(ram_gib=cast.ram / 0.85 / 2**30)).verdict == "fits"  # file pages can be reclaimed
