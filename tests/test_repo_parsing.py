"""`parse_repo`, `destination` and `choose_files`: the text users paste and the files we pick (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loaders.errors import DownloadError, RepoNameError, UnsafePathError
from webui.download import RemoteFile, RepoListing, RepoRef, choose_files, destination, parse_repo


@pytest.mark.parametrize(
    ("text", "repo_id", "branch"),
    [
        ("TheBloke/CodeLlama-13B-GPTQ", "TheBloke/CodeLlama-13B-GPTQ", "main"),
        (
            "  TheBloke/CodeLlama-34B-Instruct-GPTQ:gptq-4bit-32g-actorder_True \n",
            "TheBloke/CodeLlama-34B-Instruct-GPTQ",
            "gptq-4bit-32g-actorder_True",
        ),
        (
            "https://huggingface.co/TheBloke/CodeUp-Llama-2-13B-Chat-HF-GGUF",
            "TheBloke/CodeUp-Llama-2-13B-Chat-HF-GGUF",
            "main",
        ),
        (
            "https://huggingface.co/TheBloke/Llama-2-7B-GPTQ/tree/gptq-4bit-64g",
            "TheBloke/Llama-2-7B-GPTQ",
            "gptq-4bit-64g",
        ),
        (" https://hf.co/org/model/tree/feature%2Fx ", "org/model", "feature/x"),
        ("org/model:v1.0", "org/model", "v1.0"),
    ],
)
def test_accepted_forms(text: str, repo_id: str, branch: str) -> None:
    assert parse_repo(text) == RepoRef(repo_id, branch)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "gpt2",
        "a/b/c",
        "owner/re po",
        "owner/repo:",
        "owner/repo:bad branch",
        "owner/repo:a..b",
        "owner/../repo",
        "owner/repo--x",
        "owner/repo!",
        "https://example.com/owner/repo",
        "https://huggingface.co/owner",
        "https://huggingface.co/owner/repo/discussions",
    ],
)
def test_refused_forms_say_what_is_expected(text: str) -> None:
    with pytest.raises(RepoNameError, match=r"owner/repo:branch"):
        parse_repo(text)


def test_destination_follows_the_ecosystem_rule(tmp_path: Path) -> None:
    assert destination(tmp_path, RepoRef("TheBloke/CodeLlama-13B-GPTQ")) == tmp_path / "TheBloke_CodeLlama-13B-GPTQ"
    branch = RepoRef("TheBloke/CodeLlama-34B-Instruct-GPTQ", "gptq-4bit-32g-actorder_True")
    assert destination(tmp_path, branch).name == "TheBloke_CodeLlama-34B-Instruct-GPTQ_gptq-4bit-32g-actorder_True"
    assert destination(tmp_path, RepoRef("a/b", "feature/x")).parent == tmp_path


def _listing(*files: tuple[str, int]) -> RepoListing:
    remote = tuple(RemoteFile(name, size, sha256="0" * 64 if size > 10_000_000 else None) for name, size in files)
    return RepoListing(RepoRef("o/r"), "c" * 40, remote, "http://hub")


def _names(files) -> set[str]:
    return {f.path for f in files}


def test_safetensors_win_over_pickles_and_small_files_are_kept() -> None:
    plan = choose_files(
        _listing(
            (".gitattributes", 1500),
            ("README.md", 3000),
            ("config.json", 700),
            ("chat_template.jinja", 400),
            ("tokenizer.model", 500_000),
            ("model-00001-of-00002.safetensors", 5_000_000_000),
            ("model-00002-of-00002.safetensors", 2_000_000_000),
            ("model.safetensors.index.json", 30_000),
            ("pytorch_model-00001-of-00002.bin", 5_000_000_000),
            ("pytorch_model.bin.index.json", 30_000),
            ("training_args.bin", 4000),
            ("flax_model.msgpack", 7_000_000_000),
            ("original/consolidated.00.pth", 7_000_000_000),
            ("model.Q4_K_M.gguf", 4_000_000_000),
        )
    )
    assert _names(plan.chosen) == {
        "README.md",
        "config.json",
        "chat_template.jinja",
        "tokenizer.model",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    }
    reasons = {s.file.path: s.reason for s in plan.skipped}
    assert "safetensors" in reasons["pytorch_model-00001-of-00002.bin"]
    assert reasons[".gitattributes"] == "git metadata"
    assert plan.gguf_file is None and plan.gguf_choices == ("model.Q4_K_M.gguf",)


def test_pickles_are_taken_when_there_is_nothing_else() -> None:
    plan = choose_files(_listing(("config.json", 700), ("pytorch_model.bin", 500_000_000), ("training_args.bin", 4000)))
    assert _names(plan.chosen) == {"config.json", "pytorch_model.bin"}


def test_one_gguf_only_q4_k_m_by_default_and_shards_stay_together() -> None:
    listing = _listing(
        ("README.md", 100),
        ("m.Q2_K.gguf", 2_000_000_000),
        ("m.Q4_K_M-00001-of-00002.gguf", 3_000_000_000),
        ("m.Q4_K_M-00002-of-00002.gguf", 1_000_000_000),
        ("m.Q8_0.gguf", 7_000_000_000),
    )
    plan = choose_files(listing)
    assert plan.gguf_file == "m.Q4_K_M.gguf"
    assert _names(plan.chosen) == {"README.md", "m.Q4_K_M-00001-of-00002.gguf", "m.Q4_K_M-00002-of-00002.gguf"}
    assert plan.gguf_choices == ("m.Q2_K.gguf", "m.Q4_K_M.gguf", "m.Q8_0.gguf")
    assert _names(choose_files(listing, gguf_file="m.Q8_0.gguf").chosen) == {"README.md", "m.Q8_0.gguf"}
    with pytest.raises(DownloadError, match="m.Q8_0.gguf"):
        choose_files(listing, gguf_file="m.Q5_K_M.gguf")


def test_without_q4_k_m_the_smallest_sensible_gguf_is_chosen() -> None:
    plan = choose_files(
        _listing(("m.IQ2_XS.gguf", 1_000_000_000), ("m.Q6_K.gguf", 5_000_000_000), ("m.F16.gguf", 9_000_000_000))
    )
    assert plan.gguf_file == "m.Q6_K.gguf"
    plan = choose_files(_listing(("m.IQ2_XS.gguf", 1_000_000_000), ("m.F16.gguf", 9_000_000_000), ("x.gguf", 2 << 30)))
    assert plan.gguf_file == "x.gguf"


@pytest.mark.parametrize("name", ["../../x", "/etc/passwd", "a\\..\\b", "C:/Windows/x", "a/./b", "a//b", ""])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError, match="escape"):
        choose_files(_listing(("config.json", 10), (name, 10)))


def test_the_folder_s_remembered_gguf_is_kept_unless_another_is_asked_for() -> None:
    listing = _listing(
        ("m.Q2_K.gguf", 2_000_000_000),
        ("m.Q4_K_M-00001-of-00002.gguf", 3_000_000_000),
        ("m.Q4_K_M-00002-of-00002.gguf", 1_000_000_000),
        ("m.Q8_0.gguf", 7_000_000_000),
    )
    assert choose_files(listing, remembered="m.Q8_0.gguf").gguf_file == "m.Q8_0.gguf"
    assert choose_files(listing, gguf_file="m.Q2_K.gguf", remembered="m.Q8_0.gguf").gguf_file == "m.Q2_K.gguf"
    assert choose_files(listing, remembered="m.Q5_K_M.gguf").gguf_file == "m.Q4_K_M.gguf"  # gone: the default
    plan = choose_files(listing, remembered="m.Q4_K_M-00001-of-00002.gguf")
    assert plan.gguf is not None and plan.gguf.name == "m.Q4_K_M-00001-of-00002.gguf"  # what the record stores
    assert plan.gguf.parts == ("m.Q4_K_M-00001-of-00002.gguf", "m.Q4_K_M-00002-of-00002.gguf")


def test_a_remembered_gguf_beside_safetensors_is_still_the_folder_s_pick() -> None:
    listing = _listing(("config.json", 700), ("model.safetensors", 500_000_000), ("m.Q4_K_M.gguf", 90_000_000))
    assert choose_files(listing).gguf_file is None
    plan = choose_files(listing, remembered="m.Q4_K_M.gguf")
    assert _names(plan.chosen) == {"config.json", "m.Q4_K_M.gguf"}
