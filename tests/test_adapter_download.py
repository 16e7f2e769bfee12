"""The Download box and adapters / GGML, against the Hub test server: a PEFT adapter repository and a GGUF LoRA go to
the loras folder (`--loras-dir`), a GGML repository is refused with the reason and its `-GGUF` sibling named when the
Hub has it; locally, GGML files and adapters put among the models get the same next step."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from loaders.detect import detect
from loaders.errors import DownloadError, UnsupportedModelError
from loaders.files.adapter import list_adapters, read_adapter
from loaders.files.gguf_header import read_gguf_header
from loaders.files.model_files import GGML_MAGICS, SOURCE_RECORD
from loaders.lora.to_gguf import to_gguf
from tests import lora_fixtures
from tests.hubserver import (  # noqa: F401 - fixtures
    GGUF_REPO,
    HubServer,
    hub_fixture,
    hub_root_fixture,
    hub_server_fixture,
)
from webui.download import DownloadManager, list_files, parse_repo

ADAPTER_REPO = "corral-test/SmolLM2-mlp-lora"
GGUF_LORA_REPO = "corral-test/SmolLM2-mlp-lora-GGUF"
GGML_REPO = "corral-test/SmolLM2-135M-Instruct-GGML"  # its -GGUF sibling is the fixture GGUF_REPO
LONELY_GGML_REPO = "corral-test/Lonely-GGML"


def ggml_bytes() -> bytes:
    return struct.pack("<I", GGML_MAGICS[2]) + b"\0" * 4096  # ggjt, as llama.cpp wrote ggmlv3 files


@pytest.fixture()
def repos(hub: HubServer, tmp_path: Path, smollm2_gguf: Path) -> HubServer:
    adapter = lora_fixtures.smollm2_adapter("mlp")
    folder = hub.branch_dir(ADAPTER_REPO)
    for item in adapter.iterdir():
        shutil.copy2(item, folder / item.name)
    (folder / "adapter_model.bin").write_bytes(b"pickle")  # never fetched: the safetensors file is
    work = tmp_path / "work" / "smollm2-mlp"
    shutil.copytree(adapter, work)
    converted = to_gguf(read_adapter(work), read_gguf_header(smollm2_gguf), "SmolLM2")
    shutil.copy2(converted, hub.branch_dir(GGUF_LORA_REPO) / "SmolLM2-mlp-lora.f32.gguf")
    for repo in (GGML_REPO, LONELY_GGML_REPO):
        (hub.branch_dir(repo) / "model.ggmlv3.q4_0.bin").write_bytes(ggml_bytes())
        (hub.branch_dir(repo) / "README.md").write_text("# GGML\n")
    return hub


def test_peft_adapter_repo_lands_in_the_loras_folder(repos: HubServer, tmp_path: Path) -> None:
    models, loras = tmp_path / "models", tmp_path / "loras"
    job = DownloadManager(models, loras_dir=loras).start(ADAPTER_REPO)
    progress = job.wait(120)
    assert progress.state == "done", progress.message
    folder = loras / "corral-test_SmolLM2-mlp-lora"
    assert job.target == folder and not (models / folder.name).exists()
    assert {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")} == {
        "adapter_config.json", "adapter_model.safetensors", "README.md"}  # fmt: skip
    skipped = {s.file.path: s.reason for s in job.plan.skipped}
    assert "adapter_model.bin" in skipped and job.plan.kind == "adapter"
    assert list_adapters(loras) == [folder.name] and read_adapter(folder).rank == 4
    assert "LoRA adapter" in progress.message


def test_gguf_lora_repo_is_recognised_by_its_header(repos: HubServer, tmp_path: Path) -> None:
    models, loras = tmp_path / "models", tmp_path / "loras"
    job = DownloadManager(models, loras_dir=loras).start(GGUF_LORA_REPO)
    assert job.wait(120).state == "done"
    assert job.plan.kind == "adapter" and [f.path for f in job.plan.chosen] == ["SmolLM2-mlp-lora.f32.gguf"]
    assert not (models / "corral-test_SmolLM2-mlp-lora-GGUF").exists()
    adapter = read_adapter(loras / "corral-test_SmolLM2-mlp-lora-GGUF")
    assert (adapter.format, adapter.architecture) == ("gguf", "llama")


def test_ggml_repo_is_refused_naming_its_gguf_sibling(repos: HubServer) -> None:
    with pytest.raises(DownloadError, match=rf"GGML files .* stopped reading .* Its GGUF version is {GGUF_REPO}"):
        list_files(parse_repo(GGML_REPO))
    with pytest.raises(DownloadError, match="Look for a GGUF version of this model"):
        list_files(parse_repo(LONELY_GGML_REPO))


def test_local_ggml_file_names_the_gguf_repo_it_came_from(tmp_path: Path) -> None:
    folder = tmp_path / "corral-test_SmolLM2-135M-Instruct-GGML"
    folder.mkdir()
    (folder / "model.ggmlv3.q4_0.bin").write_bytes(ggml_bytes())
    (folder / SOURCE_RECORD).write_text(f'{{"repo": "{GGML_REPO}", "branch": "main", "commit": "x", '
                                        '"endpoint": "e", "files": {}}')  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=f"GGML file.*download {GGUF_REPO}"):
        detect(folder)


def test_adapters_among_the_models_are_sent_to_the_loras_folder(tmp_path: Path, smollm2_gguf: Path) -> None:
    folder = tmp_path / "models" / "mlp-adapter"
    shutil.copytree(lora_fixtures.smollm2_adapter("mlp"), folder)
    with pytest.raises(UnsupportedModelError, match="holds a LoRA adapter .* move it to the loras folder"):
        detect(folder)
    gguf_lora = to_gguf(read_adapter(folder), read_gguf_header(smollm2_gguf), "SmolLM2")
    loose = tmp_path / "models" / "gguf-adapter"
    loose.mkdir()
    shutil.copy2(gguf_lora, loose / "mlp.gguf")
    with pytest.raises(UnsupportedModelError, match="mlp.gguf is a LoRA adapter"):
        detect(loose)
