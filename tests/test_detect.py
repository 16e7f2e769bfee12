"""Model detection on real folders: SmolLM2 as Transformers, as GPTQ branches, as GGUF, a GGML file, broken input,
and the `python -m loaders.detect` command line."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from loaders import detect as detect_module
from loaders.detect import detect
from loaders.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from loaders.files import list_models
from loaders.files.model_files import GGML_MAGICS
from tests.conftest import link_tree
from tests.gptq_fixtures import BRANCHES, smollm2_gptq

REPO_ROOT = Path(__file__).resolve().parent.parent
GPTQ_BRANCHES = ("main", "gptq-4bit-32g-actorder_True", "gptq-8bit--1g-actorder_True")


def llama_params(config: dict) -> int:
    """Parameters of a Llama model with tied embeddings, from its config alone (an independent count)."""
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter + 2 * hidden
    return config["vocab_size"] * hidden + layers * per_layer + hidden


def replace_json(path: Path, data: object) -> None:
    """Write JSON over a hard-linked file without changing the cached original."""
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def gptq_copy(tmp_path: Path, branch: str, name: str = "model") -> Path:
    return link_tree(smollm2_gptq(branch), tmp_path / name)


def write_gguf(path: Path, *, file_type: gguf.LlamaFileType, context: int = 2048) -> Path:
    """A tiny but complete GGUF file whose metadata says `file_type`."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(file_type)
    writer.add_context_length(context)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --- Transformers ----------------------------------------------------------------------------------------------------


def test_transformers_folder(smollm2_hf: Path) -> None:
    config = json.loads((smollm2_hf / "config.json").read_text())
    tokenizer_config = json.loads((smollm2_hf / "tokenizer_config.json").read_text())
    found = detect(smollm2_hf)
    assert found.loader == "transformers"
    assert found.model_type == "llama"
    assert found.context_length == config["max_position_embeddings"] == 8192
    assert found.rope_theta == config["rope_parameters"]["rope_theta"]
    assert found.n_params == llama_params(config)
    assert found.quant is None and found.settings == {}
    assert found.has_chat_template
    assert found.chat_template == (smollm2_hf / "chat_template.jinja").read_text()
    assert found.chat_template_source == "chat_template.jinja"
    assert (found.bos_token, found.eos_token) == (tokenizer_config["bos_token"], tokenizer_config["eos_token"])
    assert found.reasons[0] == "config.json and model.safetensors: a Transformers model"


def test_chat_template_from_tokenizer_config(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    (folder / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    replace_json(folder / "tokenizer_config.json", tokenizer_config)
    found = detect(folder)
    assert (found.chat_template, found.chat_template_source) == ("D", "tokenizer_config.json")


# --- GPTQ ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branch_name", GPTQ_BRANCHES)
def test_gptq_branches(branch_name: str, smollm2_hf: Path) -> None:
    branch = BRANCHES[branch_name]
    found = detect(smollm2_gptq(branch_name))
    assert found.loader == "gptq"
    expected = {"bits": branch.bits, "group_size": branch.group_size, "desc_act": branch.desc_act,
                "sym": branch.sym, "checkpoint_format": branch.checkpoint_format}
    assert {k: found.settings[k] for k in expected} == expected
    assert found.n_params == llama_params(json.loads((smollm2_hf / "config.json").read_text()))
    assert found.has_chat_template and found.model_type == "llama"


def test_gptq_main_reads_quantization_config() -> None:
    found = detect(smollm2_gptq("main"))
    assert found.quant == "GPTQ 4-bit g128"
    assert found.settings_sources["bits"] == "config.json quantization_config"
    assert found.reasons[0].startswith(
        "config.json quantization_config says 4-bit, group size 128, act-order off, symmetric"
    )
    assert found.settings["weights_file"] == "model.safetensors"


def test_gptq_act_order_branches_describe_quant() -> None:
    assert detect(smollm2_gptq("gptq-4bit-32g-actorder_True")).quant == "GPTQ 4-bit g32 act-order"
    sharded = detect(smollm2_gptq("gptq-8bit--1g-actorder_True"))
    assert sharded.quant == "GPTQ 8-bit act-order"
    assert "no groups, act-order on" in sharded.reasons[0]
    assert sharded.settings["weights_file"] == ""  # shards: the loader follows the index


def test_gptq_model_file_base_name() -> None:
    found = detect(smollm2_gptq("gptq-3bit-128g-actorder_False"))
    assert found.settings["weights_file"] == "gptq_model-3bit-128g.safetensors"
    assert found.settings["sym"] is False


# --- GGUF ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_quant_folder(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Path:
    """The real Q4_1 file under two names that lie about the quant: only the metadata tells the truth."""
    folder = tmp_path_factory.mktemp("gguf") / "SmolLM2-GGUF"
    folder.mkdir()
    for name in ("smollm2.Q8_0.gguf", "smollm2.Q4_K_M.gguf"):
        (folder / name).hardlink_to(smollm2_gguf)
    return folder


def test_gguf_folder_with_two_files(two_quant_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect_module.registry, "is_available", lambda name: False)
    found = detect(two_quant_folder)
    assert found.loader == "gguf"
    assert [(f.name, f.quant) for f in found.gguf_files] == [
        ("smollm2.Q4_K_M.gguf", "Q4_1"), ("smollm2.Q8_0.gguf", "Q4_1")
    ]
    # neither file is Q4_K_M by its general.file_type, whatever its name says: the preference rule's next quant
    # (Q4_1), the first of the two by name
    assert found.settings == {"file": "smollm2.Q4_K_M.gguf", "n_ctx": 8192}
    assert "no Q4_K_M here" in found.reasons[0]
    reader = gguf.GGUFReader(two_quant_folder / "smollm2.Q8_0.gguf")
    assert found.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert found.quant == "GGUF Q4_1"
    assert found.context_length == 8192 and found.rope_theta == pytest.approx(1e5)
    assert found.chat_template == reader.fields["tokenizer.chat_template"].contents()
    assert (found.bos_token, found.eos_token) == ("<|im_start|>", "<|im_end|>")


def test_gguf_prefers_q4_k_m_by_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write_gguf(folder / "a.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q8_0)
    write_gguf(folder / "b.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M, context=32768)
    found = detect(folder)
    assert found.settings["file"] == "b.gguf"
    assert found.settings["n_ctx"] == detect_module.AUTO_N_CTX_MAX < found.context_length == 32768
    assert found.quant == "GGUF Q4_K_M"
    assert not found.has_chat_template


def test_gguf_loader_follows_llama_cpp_availability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_gguf(tmp_path / "one.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_1)
    monkeypatch.setattr(detect_module.registry, "is_available", lambda name: name == "llama.cpp")
    found = detect(path)
    assert found.loader == "llama.cpp"
    assert found.settings["file"] == "one.gguf" and found.gguf_files == []


# --- GGML and broken input --------------------------------------------------------------------------------------------


def ggml_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<I", GGML_MAGICS[2]) + b"\0" * 64)  # ggjt, as llama.cpp wrote ggmlv3 files
    return path


def test_ggml_folder_is_refused(tmp_path: Path) -> None:
    ggml_file(tmp_path / "Llama-2-7B-GGML" / "llama-2-7b.ggmlv3.q4_0.bin")
    with pytest.raises(UnsupportedModelError, match="GGML is no longer supported, use a GGUF file") as error:
        detect(tmp_path / "Llama-2-7B-GGML")
    assert error.value.path.name == "llama-2-7b.ggmlv3.q4_0.bin"


def test_ggml_loose_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="GGML is no longer supported"):
        detect(ggml_file(tmp_path / "model.bin"))


def test_malformed_config_json(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    replace_json(folder / "config.json", '{"model_type": "llama",')
    with pytest.raises(ModelFormatError, match=r"config.json is not valid JSON \(line 1") as error:
        detect(folder)
    assert error.value.path == folder / "config.json"


def test_malformed_quantize_config(tmp_path: Path) -> None:
    folder = gptq_copy(tmp_path, "gptq-4bit-32g-actorder_True")
    replace_json(folder / "quantize_config.json", "{bits: 4}")
    with pytest.raises(ModelFormatError, match="quantize_config.json is not valid JSON") as error:
        detect(folder)
    assert error.value.path == folder / "quantize_config.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bits": 5}, "quantize_config.json says bits: 5; GPTQ weights are 2, 3, 4 or 8-bit"),
        ({"group_size": 0}, "quantize_config.json says group_size: 0; it must be -1"),
        ({"group_size": "32"}, "quantize_config.json says group_size: '32'"),
        ({"desc_act": "yes"}, "desc_act: 'yes'; it must be true or false"),
        ({"checkpoint_format": "marlin"}, "checkpoint_format: marlin"),
    ],
)
def test_invalid_quantize_config_values(tmp_path: Path, change: dict, message: str) -> None:
    folder = gptq_copy(tmp_path, "gptq-4bit-32g-actorder_True")
    config = json.loads((folder / "quantize_config.json").read_text())
    replace_json(folder / "quantize_config.json", {**config, **change})
    with pytest.raises(ModelFormatError, match=message) as error:
        detect(folder)
    assert error.value.path == folder / "quantize_config.json"


def test_qweight_contradicts_bits(tmp_path: Path) -> None:
    folder = gptq_copy(tmp_path, "gptq-4bit-32g-actorder_True")
    config = json.loads((folder / "quantize_config.json").read_text())
    replace_json(folder / "quantize_config.json", {**config, "bits": 8})
    with pytest.raises(ModelFormatError, match=r"qweight \[\d+, \d+\] I32 .* do not fit 8-bit GPTQ") as error:
        detect(folder)
    assert error.value.path == folder / "model.safetensors"


def test_scales_contradict_group_size(tmp_path: Path) -> None:
    folder = gptq_copy(tmp_path, "gptq-4bit-32g-actorder_True")
    config = json.loads((folder / "quantize_config.json").read_text())
    replace_json(folder / "quantize_config.json", {**config, "group_size": 128})
    pattern = r"has (\d+) groups but quantize_config.json says group size 128, which gives (\d+) for (\d+) inputs"
    with pytest.raises(ModelFormatError, match=pattern) as error:
        detect(folder)
    groups, expected, inputs = map(int, re.search(pattern, str(error.value)).groups())
    assert (groups, expected) == (-(-inputs // 32), -(-inputs // 128))


def test_two_gptq_configs_that_disagree(tmp_path: Path) -> None:
    folder = gptq_copy(tmp_path, "main")
    config = json.loads((folder / "config.json").read_text())
    replace_json(folder / "quantize_config.json", {**config["quantization_config"], "group_size": 32})
    with pytest.raises(ModelFormatError, match="quantize_config.json says group_size: 32 but config.json"):
        detect(folder)


def test_other_quant_method_is_unsupported(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    replace_json(folder / "config.json", {**config, "quantization_config": {"quant_method": "eetq", "bits": 8}})
    with pytest.raises(UnsupportedModelError, match="quantized with eetq, which Corral cannot load"):
        detect(folder)


def test_weights_missing(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="The weights are missing") as error:
        detect(folder)
    assert error.value.path == folder


def test_shard_missing(tmp_path: Path) -> None:
    folder = gptq_copy(tmp_path, "gptq-8bit--1g-actorder_True")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="Weight shard model-00002-of-00002.safetensors .* is missing"):
        detect(folder)


def test_truncated_safetensors(tmp_path: Path, smollm2_hf: Path) -> None:
    folder = link_tree(smollm2_hf, tmp_path / "m")
    (folder / "model.safetensors").unlink()
    save_file({"model.embed_tokens.weight": np.zeros((64, 8), np.float32)}, folder / "model.safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="model.safetensors is truncated or corrupt") as error:
        detect(folder)
    assert error.value.path == folder / "model.safetensors"


@pytest.mark.parametrize("size", [16, 1000])
def test_truncated_gguf_header(tmp_path: Path, smollm2_gguf: Path, size: int) -> None:
    path = tmp_path / "m" / smollm2_gguf.name
    path.parent.mkdir()
    with open(smollm2_gguf, "rb") as source:
        path.write_bytes(source.read(size))
    with pytest.raises(ModelFormatError, match="is not a complete GGUF file") as error:
        detect(path.parent)
    assert error.value.path == path


def test_no_model_in_folder(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("hello")
    with pytest.raises(ModelFormatError, match="No model found in this folder"):
        detect(tmp_path / "m")
    with pytest.raises(ModelNotFoundError):
        detect(tmp_path / "absent")


# --- listing ---------------------------------------------------------------------------------------------------------


def test_list_models(models_dir: Path, tmp_path: Path) -> None:
    write_gguf(models_dir / "loose.Q4_K_M.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    (models_dir / ".cache").mkdir()
    (models_dir / ".cache" / "x").write_text("x")
    (models_dir / "Downloading.incomplete").mkdir()
    (models_dir / "Downloading.incomplete" / "x").write_text("x")
    (models_dir / "empty").mkdir()
    (models_dir / "config.yaml").write_text("{}")
    (models_dir / "half.gguf.part").write_text("x")
    assert list_models(models_dir) == ["loose.Q4_K_M.gguf", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct-GGUF"]
    assert list_models(tmp_path / "nowhere") == []


# --- command line -----------------------------------------------------------------------------------------------------


def run_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loaders.detect", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_detection_as_json(smollm2_hf: Path) -> None:
    result = run_cli(smollm2_hf)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["loader"] == "transformers"
    assert printed["chat_template"] == (smollm2_hf / "chat_template.jinja").read_text()
    assert printed["reasons"] == detect(smollm2_hf).reasons


def test_cli_gptq_settings() -> None:
    result = run_cli(smollm2_gptq("gptq-4bit-32g-actorder_True"))
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert (settings["bits"], settings["group_size"], settings["desc_act"]) == (4, 32, True)


def test_cli_error_exits_1(tmp_path: Path) -> None:
    ggml_file(tmp_path / "old" / "llama.ggmlv3.q4_0.bin")
    result = run_cli(tmp_path / "old")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "GGML is no longer supported" in result.stderr and "llama.ggmlv3.q4_0.bin" in result.stderr
    assert "Traceback" not in result.stderr
