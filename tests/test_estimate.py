"""webui.estimate: exact KV formula, published file sizes / "Max RAM" of Llama-2-13B quants from headers and configs
alone, GPU layer fitting on faked GPUs, the Hub path (test server), the CLI, and estimated vs measured RAM on the
real SmolLM2 fixtures (each load measured in a fresh process by tests/memprobe.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from loaders.errors import InsufficientMemoryError, ModelFormatError
from loaders.hardware import GIB, fake
from loaders.settings import settings_for
from tests.hubserver import GGUF_REPO, HubServer, hub_fixture, hub_root_fixture, hub_server_fixture  # noqa: F401
from webui import estimate as E

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9  # the cards' sizes are decimal gigabytes
LLAMA2_13B = dict(n_layers=40, hidden=5120, n_heads=40, n_kv_heads=40, head_dim=128, vocab=32000, ffn=13824,
                  context_max=4096)  # fmt: skip
CODELLAMA_34B = dict(n_layers=48, hidden=8192, n_heads=64, n_kv_heads=8, head_dim=128, vocab=32000, ffn=22016,
                     context_max=16384)  # fmt: skip


def llama2_13b_config() -> dict:
    """The fields of TheBloke/Llama-2-13B-GPTQ's config.json that matter."""
    return {"model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
            "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "torch_dtype": "float16"}  # fmt: skip


# --- synthetic GGUF headers with the tensor types llama.cpp's Q4_K_M rule gives ----------------------------------


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp `use_more_bits`: which layers' attn_v / ffn_down Q4_K_M keeps in Q6_K."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def write_q4_k_m_header(path: Path, *, n_layers: int, hidden: int, n_heads: int, n_kv_heads: int, head_dim: int,
                        vocab: int, ffn: int, context_max: int) -> Path:  # fmt: skip
    """A GGUF file holding only the header (metadata + tensor infos) of a Llama Q4_K_M model: no tensor data."""
    q4, q6, f32 = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K, gguf.GGMLQuantizationType.F32
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(n_layers)
    writer.add_context_length(context_max)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    writer.add_token_list([f"<tok{i}>" for i in range(vocab)])  # a header as long as a real one

    def info(name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> None:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, shape, np.dtype(np.float32), math.prod(shape) // block * type_size, qtype)

    info("token_embd.weight", (vocab, hidden), q4)
    for i in range(n_layers):
        more = q6 if _more_bits(i, n_layers) else q4
        info(f"blk.{i}.attn_norm.weight", (hidden,), f32)
        info(f"blk.{i}.attn_q.weight", (n_heads * head_dim, hidden), q4)
        info(f"blk.{i}.attn_k.weight", (n_kv_heads * head_dim, hidden), q4)
        info(f"blk.{i}.attn_v.weight", (n_kv_heads * head_dim, hidden), more)
        info(f"blk.{i}.attn_output.weight", (hidden, n_heads * head_dim), q4)
        info(f"blk.{i}.ffn_norm.weight", (hidden,), f32)
        info(f"blk.{i}.ffn_gate.weight", (ffn, hidden), q4)
        info(f"blk.{i}.ffn_up.weight", (ffn, hidden), q4)
        info(f"blk.{i}.ffn_down.weight", (hidden, ffn), more)
    info("output_norm.weight", (hidden,), f32)
    info("output.weight", (vocab, hidden), q6)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def llama2_13b_q4km(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_q4_k_m_header(tmp_path_factory.mktemp("gguf") / "llama-2-13b.Q4_K_M.gguf", **LLAMA2_13B)


@pytest.fixture(scope="module")
def codellama_34b_q4km(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_q4_k_m_header(tmp_path_factory.mktemp("gguf") / "codellama-34b.Q4_K_M.gguf", **CODELLAMA_34B)


def within(value: float, reference: float, tolerance: float) -> bool:
    return abs(value - reference) <= tolerance * reference


# --- the KV cache formula ------------------------------------------------------------------------------------------


def test_kv_cache_llama2_13b_exact() -> None:
    shape = E.ModelShape(**LLAMA2_13B)
    assert shape.kv_cache_bytes(4096, 2) == 3_355_443_200
    weights = E.WeightsInfo((), "none")
    est = E.estimate(shape, weights, loader="llama.cpp", ctx=4096, kv_bytes=2)
    assert est.parts["ram"]["kv_cache"] == 3_355_443_200


def test_kv_cache_gqa_smaller_by_head_ratio(smollm2_hf: Path) -> None:
    mha = E.ModelShape(**{**CODELLAMA_34B, "n_kv_heads": 64})
    gqa = E.ModelShape(**CODELLAMA_34B)
    assert mha.kv_cache_bytes(16384) == 8 * gqa.kv_cache_bytes(16384)
    smol = E.ModelShape.from_config(json.loads((smollm2_hf / "config.json").read_text()))
    assert (smol.n_heads, smol.n_kv_heads, smol.head_dim) == (9, 3, 64)
    assert E.ModelShape(**{**smol.__dict__, "n_kv_heads": 9}).kv_cache_bytes(2048) == 3 * smol.kv_cache_bytes(2048)


def test_gguf_shape_matches_config(smollm2_gguf: Path, smollm2_hf: Path) -> None:
    from_gguf, _ = E.local_shape_weights(smollm2_gguf)
    from_config = E.ModelShape.from_config(json.loads((smollm2_hf / "config.json").read_text()))
    assert from_gguf.kv_bytes_per_token() == from_config.kv_bytes_per_token()
    assert (from_gguf.n_layers, from_gguf.hidden, from_gguf.ffn, from_gguf.vocab) == (30, 576, 1536, 49152)
    assert from_gguf.tied_embeddings and from_config.tied_embeddings


# --- weights from headers ----------------------------------------------------------------------------------------


def test_gguf_header_weights_match_the_real_file(smollm2_gguf: Path) -> None:
    shape, weights = E.local_shape_weights(smollm2_gguf)
    reader = gguf.GGUFReader(smollm2_gguf)  # the reference: the library's own reader of the whole file
    assert weights.total == sum(int(t.n_bytes) for t in reader.tensors)
    assert weights.file_bytes == smollm2_gguf.stat().st_size
    assert sum(weights.layer_bytes(shape.n_layers)) + weights.embed_bytes() + weights.output_bytes() == weights.total


def test_gguf_header_from_first_bytes_only(smollm2_gguf: Path) -> None:
    head = smollm2_gguf.read_bytes()[: 4 * E.MIB]  # the header is 1.8 MB (tokenizer), the file 98 MB
    assert E.estimate_gguf_header(head, ctx=2048).parts == E.estimate_gguf_header(smollm2_gguf, ctx=2048).parts
    with pytest.raises(ModelFormatError, match="whole GGUF header"):
        E.estimate_gguf_header(head[: 100_000])


def test_safetensors_weights_exact(smollm2_hf: Path) -> None:
    shape, weights = E.local_shape_weights(smollm2_hf)
    assert weights.source == "safetensors headers"
    with open(smollm2_hf / "model.safetensors", "rb") as handle:
        header_and_prefix = 8 + int.from_bytes(handle.read(8), "little")
    assert 0 < weights.file_bytes - weights.total <= header_and_prefix + 4096
    assert weights.with_float_itemsize(2).total == weights.total // 2  # fp32 file loaded in bf16


def test_llama2_13b_q4_k_m_from_header_alone(llama2_13b_q4km: Path) -> None:
    # TheBloke's card (CodeUp-Llama-2-13B GGUF): q4_K_M file 7.87 GB, max RAM 10.37 GB. The RAM column is for
    # the GGML-era default context of 2048 tokens with llama.cpp's f16 KV cache.
    header = llama2_13b_q4km.read_bytes()
    assert len(header) < 2 * E.MIB  # tensor infos only
    est = E.estimate_gguf_header(header, ctx=2048)
    assert within(est.file_bytes, 7.87 * GB, 0.10), est.file_bytes / GB
    assert within(est.ram, 10.37 * GB, 0.10), est.ram / GB
    assert est.parts["ram"]["kv_cache"] == 40 * 2048 * 5120 * 2 * 2


@pytest.mark.parametrize(
    ("bits", "group", "file_gb"),
    [(4, 128, 7.26), (4, 32, 8.00), (8, -1, 13.36), (8, 128, 13.65)],
)
def test_llama2_13b_gptq_from_config_alone(bits: int, group: int, file_gb: float) -> None:
    config = llama2_13b_config()
    quant = E.gptq_config(config, {"bits": bits, "group_size": group, "desc_act": True})
    shape = E.ModelShape.from_config(config)
    weights = E.WeightsInfo(tuple(E.gptq_tensors(shape, quant)), "gptq config")
    est = E.estimate(shape, weights, loader="gptq", ctx=2048)
    assert within(weights.total, file_gb * GB, 0.10), weights.total / GB
    assert within(est.ram, (file_gb + 2.5) * GB, 0.10), est.ram / GB  # the cards' "Max RAM" = file + 2.5 GB


# --- fitting -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["llama2_13b_q4km", "codellama_34b_q4km"])
@pytest.mark.parametrize("gpu_gib", [8, 12, 24])
def test_fit_gpu_layers_picks_the_largest_that_fits(model: str, gpu_gib: int, request: pytest.FixtureRequest) -> None:
    shape, weights = E.local_shape_weights(request.getfixturevalue(model))
    hw = fake(ram_gib=64, gpu_gib=(gpu_gib,))
    n = E.fit_gpu_layers(shape, weights, hw, ctx=4096)
    est = E.estimate(shape, weights, ctx=4096, n_gpu_layers=n)
    assert est.fit(hw).verdict != "won't fit"
    assert est.parts["cuda:0"]["weights"] <= gpu_gib * GIB
    if n <= shape.n_layers:  # not everything: one more layer must not fit
        assert E.estimate(shape, weights, ctx=4096, n_gpu_layers=n + 1).fit(hw).verdict == "won't fit"


def test_fit_gpu_layers_grows_with_the_gpu(llama2_13b_q4km: Path, codellama_34b_q4km: Path) -> None:
    for path in (llama2_13b_q4km, codellama_34b_q4km):
        shape, weights = E.local_shape_weights(path)
        counts = [E.fit_gpu_layers(shape, weights, fake(gpu_gib=(g,)), ctx=4096) for g in (8, 12, 24)]
        assert counts == sorted(counts) and counts[0] < counts[2]
        assert 0 < counts[0] < shape.n_layers  # 8 GB holds part of either model
    assert E.fit_gpu_layers(*E.local_shape_weights(codellama_34b_q4km), fake(gpu_gib=()), ctx=4096) == 0


def test_fit_context(llama2_13b_q4km: Path) -> None:
    shape, weights = E.local_shape_weights(llama2_13b_q4km)
    hw = fake(ram_gib=10)
    ctx = E.fit_context(shape, weights, hw, n_gpu_layers=0)
    assert 0 < ctx < 4096
    assert E.estimate(shape, weights, ctx=ctx).fit(hw).verdict != "won't fit"
    assert E.estimate(shape, weights, ctx=ctx + 256).fit(hw).verdict == "won't fit"


def test_check_fits_refuses_with_the_numbers(llama2_13b_q4km: Path) -> None:
    shape, weights = E.local_shape_weights(llama2_13b_q4km)
    est = E.estimate(shape, weights, ctx=4096, n_gpu_layers=41)
    E.check_fits(est, fake(ram_gib=64, gpu_gib=(24,)))  # fits: no error
    with pytest.raises(InsufficientMemoryError, match="fewer GPU layers") as info:
        E.check_fits(est, fake(ram_gib=64, gpu_gib=(8,)))
    assert info.value.needed == est.device_total("cuda:0") and info.value.available == 8 * GIB
    with pytest.raises(InsufficientMemoryError, match="shorter context"):
        E.check_fits(E.estimate(shape, weights, ctx=4096), fake(ram_gib=8))
    cpu_only = E.estimate(shape, weights, ctx=4096)
    assert cpu_only.fit(fake(ram_gib=cpu_only.ram / 0.95 / GIB)).verdict == "tight"  # under 10% left
    assert cpu_only.fit(fake(ram_gib=cpu_only.ram / 0.85 / GIB)).verdict == "fits"


# --- local entry points and the CLI --------------------------------------------------------------------------------


def test_estimate_local_follows_the_settings(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    hw = fake(ram_gib=32)
    fp32 = E.estimate_local(smollm2_hf, "transformers", settings_for("transformers", {"dtype": "float32"}), hw=hw)
    bf16 = E.estimate_local(smollm2_hf, "transformers", settings_for("transformers", {"dtype": "bfloat16"}), hw=hw)
    assert fp32.parts["ram"]["weights"] == 2 * bf16.parts["ram"]["weights"]
    assert fp32.ctx == 8192  # context_length 0 = the model's max_position_embeddings
    small = E.estimate_local(smollm2_gguf.parent, "llama.cpp", settings_for("llama.cpp", {"n_ctx": 1024}), hw=hw)
    big = E.estimate_local(smollm2_gguf.parent, "llama.cpp", settings_for("llama.cpp", {"n_ctx": 4096}), hw=hw)
    assert big.parts["ram"]["kv_cache"] == 4 * small.parts["ram"]["kv_cache"]
    # llama.cpp ignores n_gpu_layers without a GPU: so does its plan, and the estimate says so
    ignored = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_gpu_layers": 99}), hw=hw)
    assert ignored.n_gpu_layers == 0 and ignored.parts["ram"]["kv_cache"] > 0 and "No GPU here" in ignored.notes[0]
    gpu = fake(ram_gib=32, gpu_gib=(0.1,))
    offloaded = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_gpu_layers": 99}), hw=gpu)
    assert offloaded.n_gpu_layers == 31 and offloaded.parts["ram"]["kv_cache"] == 0
    assert offloaded.fit(gpu).verdict == "won't fit"  # 0.1 GiB cannot hold it


def test_cli_local_prints_the_estimate(smollm2_gguf: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "webui.estimate", str(smollm2_gguf), "--ctx", "2048"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    printed = json.loads(out)
    expected = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_ctx": 2048}))
    assert printed["parts"] == expected.parts
    assert printed["totals"]["ram"] == expected.ram
    assert printed["fit"]["verdict"] == "fits"


# --- the Hub (tests/hubserver.py) ----------------------------------------------------------------------------------


def test_remote_gguf_reads_the_header_by_range(hub: HubServer, smollm2_gguf: Path) -> None:
    name = smollm2_gguf.name
    remote = E.estimate_remote(GGUF_REPO, file=name, ctx=2048)
    local = E.estimate_local(smollm2_gguf, "llama.cpp", settings_for("llama.cpp", {"n_ctx": 2048}))
    assert remote.parts == local.parts and remote.file_bytes == smollm2_gguf.stat().st_size
    header = E.fetch_gguf_header(GGUF_REPO, name, first=64 * 1024)  # too short at first: the range grows
    assert len(header.tensors) == 272


def test_remote_gptq_branches_from_config(hub: HubServer) -> None:
    repo = "TheBloke/Llama-2-13B-GPTQ"
    branches = {"main": (4, 128, 7.26), "gptq-4bit-32g-actorder_True": (4, 32, 8.00),
                "gptq-8bit--1g-actorder_True": (8, -1, 13.36)}  # fmt: skip
    for branch, (bits, group, _) in branches.items():
        folder = hub.branch_dir(repo, branch)
        quant = {"bits": bits, "group_size": group, "desc_act": branch != "main", "sym": True}
        (folder / "config.json").write_text(json.dumps(llama2_13b_config()))
        (folder / "quantize_config.json").write_text(json.dumps(quant))
    # The GPTQ loader runs on a GPU when there is one (fp16, Triton): the cards' "file + 2.5 GB" is then VRAM.
    rows = E.per_file(repo, ctx=2048, hw=fake(ram_gib=32, gpu_gib=(12,)), branches=list(branches))
    assert [r.name for r in rows] == list(branches)
    for row, (_, _, file_gb) in zip(rows, branches.values(), strict=True):
        assert row.estimate is not None and row.estimate.loader == "gptq"
        assert within(row.vram, (file_gb + 2.5) * GB, 0.10), (row.name, row.vram / GB)
    assert [r.verdict for r in rows] == ["fits", "fits", "won't fit"]
    # Without a GPU the plan is the CPU's (fp32 activations and KV cache): more RAM than the card's figure
    cpu_rows = E.per_file(repo, ctx=2048, hw=fake(ram_gib=32), branches=list(branches))
    assert all(r.vram == 0 and r.ram > (file_gb + 2.5) * GB for r, (_, _, file_gb) in
               zip(cpu_rows, branches.values(), strict=True))  # fmt: skip


def test_per_file_lists_every_gguf(hub: HubServer) -> None:
    rows = E.per_file(GGUF_REPO, ctx=2048, hw=fake(ram_gib=16))
    assert sorted(r.name for r in rows) == sorted(p.name for p in hub.branch_dir(GGUF_REPO).glob("*.gguf"))
    assert all(r.verdict == "fits" and r.ram > 0 and r.vram == 0 for r in rows)


def test_cli_remote(hub: HubServer, smollm2_gguf: Path) -> None:
    env = dict(os.environ, HF_ENDPOINT=hub.url)
    out = subprocess.run([sys.executable, "-m", "webui.estimate", f"{GGUF_REPO}:main", "--file", smollm2_gguf.name,
                          "--ctx", "1024", "--gpu-layers", "10", "--gpu-gib", "24"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    printed = json.loads(out)
    assert printed["n_gpu_layers"] == 10 and printed["parts"]["cuda:0"]["weights"] > 0


# --- measured vs estimated on the real SmolLM2 fixtures ------------------------------------------------------------


# The torch loaders touch a slot's KV cache on the CPU as it fills: one request at 1024, and at 2048 four requests
# filling four slots at once (the estimate prices every slot it plans). llama.cpp allocates all its slots at load.
TORCH_RUNS = ((1024, {"parallel": 1}), (2048, {"parallel": 4}))


def _cases() -> list[tuple[str, str, int, dict]]:
    cases = [("transformers", "hf", ctx, values) for ctx, values in TORCH_RUNS]  # dtype auto: the plan's choice
    cases += [("llama.cpp", "gguf", ctx, {}) for ctx in (1024, 2048)]
    if importlib.util.find_spec("loaders.gguf_native") is not None:
        cases += [("gguf", "gguf", ctx, values) for ctx, values in TORCH_RUNS]
    if importlib.util.find_spec("loaders.gptq") is not None:
        branches = ("main", "gptq-8bit--1g-actorder_True")
        cases += [("gptq", branch, ctx, values) for branch in branches for ctx, values in TORCH_RUNS]
    return cases


def _gptq_branch(name: str) -> Path:
    from tests.gptq_fixtures import smollm2_gptq

    return smollm2_gptq(name)


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "fixture", "ctx", "values"), _cases())
def test_estimated_ram_matches_measured(loader: str, fixture: str, ctx: int, values: dict, smollm2_hf: Path,
                                        smollm2_gguf: Path) -> None:  # fmt: skip
    if loader == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    path = {"hf": smollm2_hf, "gguf": smollm2_gguf}.get(fixture) or _gptq_branch(fixture)
    command = [sys.executable, "-m", "tests.memprobe", loader, str(path), "--ctx", str(ctx)]
    if loader == "gguf" or values.get("parallel", 1) > 1:
        # The prompt fills the context instead of a 512-token generation (cheaper for CI), up to the same number of
        # positions: the KV cache and attention buffers (what depends on generation) reach the same size, and the
        # load and the first decode steps are measured as for the other runs.
        command += ["--new-tokens", "32", "--prompt-tokens", str(ctx - 32 - 8)]  # ends at ctx - 8, as the others
    command += [f"--{key}={value}" for key, value in values.items()]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    key = "n_ctx" if loader in ("llama.cpp", "gguf") else "context_length"
    settings = settings_for(loader, {key: ctx, "device": "cpu", **values})
    est = E.estimate_local(path, loader, settings)
    # The plan the estimate priced is the one the loader carried out, and the model reports what the plan said.
    assert measured["plan"]["dtype"] == measured["model"]["dtype"], measured
    assert measured["plan"]["device"] == measured["model"]["device"] == "cpu", measured
    assert measured["plan"]["file"] == measured["model"]["file"] or loader in ("transformers", "gptq"), measured
    # The high-water is the full context's, or the load's when converting the weights holds more (`loading`).
    print(f"{loader} ctx={ctx} {measured['model']['dtype']}: at load measured {measured['at_load'] / 1e6:.0f} MB, "
          f"estimated {est.ram_at_load / 1e6:.0f} MB; high-water measured {measured['increase'] / 1e6:.0f} MB, "
          f"estimated {est.peak_ram / 1e6:.0f} MB (full context {est.ram / 1e6:.0f} MB)")
    assert within(est.ram_at_load, measured["at_load"], 0.15), (measured, est.parts)
    assert within(est.peak_ram, measured["increase"], 0.15), (measured, est.parts, est.loading)


def test_cli_errors_are_messages(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 60)
    for target in (str(tmp_path / "missing" / "x.gguf"), str(broken)):
        result = subprocess.run([sys.executable, "-m", "webui.estimate", target], cwd=ROOT, capture_output=True,
                                text=True, check=False)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
