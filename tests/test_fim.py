"""Fill in the middle: the model's own FIM tokens (vocabulary or GGUF metadata), prompts in PSM order as each family
was trained (CodeLlama's spacing as Meta's reference builds it), a clear message for a model without FIM tokens,
and real infilling on SmolLM2 with StarCoder's tokens through the engine, the API's `suffix` and `app.py --infill`."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from loaders.base import GenerationParams
from loaders.errors import GenerationError
from loaders.fim import FILL_ME, find_fim, infill_ids, split_fill_me
from loaders.hf_tokenizer import HFTokenizer
from tests import fim_fixtures
from tests.browser import free_port
from tests.conftest import link_tree
from webui import infill
from webui.api import ApiServer
from webui.cli import PROMPT_END, PROMPT_START, run_once
from webui.config import AppConfig
from webui.state import AppState

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
GREEDY = GenerationParams(do_sample=False, max_new_tokens=24)
# A gap whose end the model (not trained for FIM, it just continues the prefix) runs into: the suffix must be cut.
COUNT_PREFIX, COUNT_SUFFIX = "Count to ten: 1, 2, 3, 4, ", "7, 8, 9, 10."


# --- prompts ---------------------------------------------------------------------------------------------------------


def test_codellama_prompt_is_metas_reference() -> None:
    from tokenizers import Tokenizer

    folder = fim_fixtures.codellama_style_tokenizer()
    tokenizer = HFTokenizer.from_folder(folder)
    fim = find_fim(tokenizer)
    assert fim is not None and fim.style.name == "CodeLlama"
    assert fim.prompt_text(PREFIX, SUFFIX) == f"<PRE> {PREFIX} <SUF>{SUFFIX} <MID>"
    # Meta's infilling_prompt_tokens on the raw SentencePiece-style tokenizer (like Llama's, it encodes "☺" as two
    # tokens, "▁" and one for ☺): encode(pre) with its leading space,
    # encode_infilling(suf) = encode("☺" + suf)[2:], special tokens by id.
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sp = lambda text: raw.encode(text, add_special_tokens=False).ids  # noqa: E731
    token = raw.token_to_id
    reference = [token("<s>"), token("▁<PRE>"), *sp(PREFIX), token("▁<SUF>"), *sp("☺" + SUFFIX)[2:], token("▁<MID>")]
    ids = infill_ids(tokenizer, fim, PREFIX, SUFFIX, add_bos=True)
    assert ids == reference
    pieces = raw.decode(ids, skip_special_tokens=False)
    assert pieces.startswith("<s> <PRE> def add") and f" <SUF>{SUFFIX} <MID>" in pieces  # no space before the suffix
    assert fim.end_ids == (token("▁<EOT>"),)


def test_starcoder_tokens_in_psm_order_with_prefix_and_suffix_verbatim() -> None:
    tokenizer = HFTokenizer.from_folder(fim_fixtures.smollm2_starcoder_fim())
    fim = find_fim(tokenizer)
    assert fim is not None and fim.style.name == "StarCoder" and fim.source == "the tokenizer's vocabulary"
    ids = infill_ids(tokenizer, fim, PREFIX, SUFFIX, add_bos=True)
    assert ids.index(fim.prefix_id) < ids.index(fim.suffix_id) < ids.index(fim.middle_id) == len(ids) - 1
    expected = f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    assert tokenizer.decode(ids, skip_special_tokens=False) == expected == fim.prompt_text(PREFIX, SUFFIX)
    assert set(fim.end_ids) == {tokenizer.encode(t, add_bos=False)[0] for t in ("<fim_pad>", "<|endoftext|>",
                                                                                "<file_sep>")}  # fmt: skip


def test_gguf_metadata_fim_ids_are_used() -> None:
    from loaders.files.gguf_header import read_gguf_header

    header = read_gguf_header(fim_fixtures.smollm2_starcoder_fim_gguf())
    tokenizer = HFTokenizer.from_folder(fim_fixtures.smollm2_starcoder_fim())
    fim = find_fim(tokenizer, header)
    assert (fim.source, fim.prefix_id, fim.suffix_id, fim.middle_id) == ("GGUF metadata", 3, 7, 4)
    assert fim.texts == ("<fim_prefix>", "<fim_suffix>", "<fim_middle>") and fim.style.name == "StarCoder"


def test_model_without_fim_tokens_gets_a_clear_message(smollm2_hf: Path) -> None:
    tokenizer = HFTokenizer.from_folder(smollm2_hf)
    assert find_fim(tokenizer) is None
    info = SimpleNamespace(model=SimpleNamespace(tokenizer=tokenizer), view=SimpleNamespace(
        name="SmolLM2-135M-Instruct", detection=SimpleNamespace(files=None)))  # fmt: skip
    with pytest.raises(GenerationError, match="SmolLM2-135M-Instruct has no fill-in-the-middle tokens"):
        infill.model_fim(info)


def test_fill_me_marks_one_gap() -> None:
    assert split_fill_me(f"a{FILL_ME}b") == ("a", "b")
    assert split_fill_me("no gap") is None
    with pytest.raises(GenerationError, match="Write <FILL_ME>"):
        infill.fill_parts("no gap")
    with pytest.raises(GenerationError, match="2 times"):
        infill.fill_parts(f"a{FILL_ME}b{FILL_ME}c")


# --- real infilling: SmolLM2 with StarCoder's FIM tokens --------------------------------------------------------------


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> AppState:
    root = tmp_path_factory.mktemp("fim")
    link_tree(fim_fixtures.smollm2_starcoder_fim(), root / "models" / "SmolLM2-FIM")
    app = AppState(config=AppConfig(models_dir=root / "models", loras_dir=root / "loras", user_data_dir=root / "d"))
    app.models.load("SmolLM2-FIM", loader="transformers")
    yield app
    app.models.unload()


def fill(app: AppState, prefix: str, suffix: str) -> tuple[str, str]:
    """(the middle, the prompt written out) through the generation service, as the Notebook runs it."""
    prompts = []

    def build(info):
        turn = infill.infill_turn(prefix, suffix, lambda _info: GREEDY)(info)
        prompts.append(turn.prompt)
        return turn

    updates = list(app.generation.stream("test", build))
    return updates[-1].text, prompts[0]


@pytest.fixture(scope="module")
def counted(state: AppState) -> tuple[str, str]:
    """The middle filled between COUNT_PREFIX and COUNT_SUFFIX, and the prompt written out (computed once)."""
    return fill(state, COUNT_PREFIX, COUNT_SUFFIX)


def test_the_middle_never_repeats_the_suffix(counted: tuple[str, str]) -> None:
    middle, prompt = counted
    assert prompt == f"<fim_prefix>{COUNT_PREFIX}<fim_suffix>{COUNT_SUFFIX}<fim_middle>"
    assert middle.strip(), middle
    assert COUNT_SUFFIX.splitlines()[0] not in middle and "<fim_" not in middle


def test_api_suffix_returns_only_the_middle(state: AppState, counted: tuple[str, str]) -> None:
    import openai

    expected, _ = counted
    server = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="-", max_retries=0)
        answer = client.completions.create(model="SmolLM2-FIM", prompt=COUNT_PREFIX, suffix=COUNT_SUFFIX,
                                           max_tokens=GREEDY.max_new_tokens, temperature=0)  # fmt: skip
    finally:
        server.stop()
    assert answer.choices[0].text == expected
    assert COUNT_PREFIX not in answer.choices[0].text


def test_cli_infill_without_fill_me_is_refused_before_loading(state: AppState,
                                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    args = argparse.Namespace(model="SmolLM2-FIM", loader=None, yes=True, prompt="no gap", chat=False, system=None,
                              template=None, max_new_tokens=8, greedy=True, preset=None, seed=None, show_prompt=False,
                              loras=None, infill=True)  # fmt: skip
    loaded = state.models.current
    assert run_once(state, args) == 1
    assert "Write <FILL_ME>" in capsys.readouterr().err
    assert state.models.current is loaded  # nothing was loaded or unloaded


# run_once unloads the model at the end: this test comes last among those using `state`.
def test_cli_infill_shows_the_prompt_and_prints_the_middle(state: AppState, counted: tuple[str, str],
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    args = argparse.Namespace(model="SmolLM2-FIM", loader="transformers", yes=True, prompt=f"{COUNT_PREFIX}{FILL_ME}"
                              f"{COUNT_SUFFIX}", chat=False, system=None, template=None,
                              max_new_tokens=GREEDY.max_new_tokens, greedy=True, preset=None, seed=None,
                              show_prompt=True, loras=None, infill=True)  # fmt: skip
    expected = counted[0]
    assert run_once(state, args) == 0
    out = capsys.readouterr().out
    shown = out.split(PROMPT_START + "\n", 1)[1].split("\n" + PROMPT_END, 1)
    assert shown[0] == f"<fim_prefix>{COUNT_PREFIX}<fim_suffix>{COUNT_SUFFIX}<fim_middle>"
    assert shown[1].strip() == expected.strip()


def test_llama_cpp_infills_with_the_gguf_metadata_ids(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    models = tmp_path / "models"
    (models / "fim-gguf").mkdir(parents=True)
    gguf = fim_fixtures.smollm2_starcoder_fim_gguf()
    (models / "fim-gguf" / gguf.name).hardlink_to(gguf)
    app = AppState(config=AppConfig(models_dir=models, loras_dir=tmp_path / "loras", user_data_dir=tmp_path / "d"))
    app.models.load("fim-gguf", loader="llama.cpp", loader_settings={"n_ctx": 512})
    try:
        fim = infill.model_fim(app.models.current_info)
        assert fim.source == "GGUF metadata" and (fim.prefix_id, fim.suffix_id, fim.middle_id) == (3, 7, 4)
        middle, prompt = fill(app, COUNT_PREFIX, COUNT_SUFFIX)
        assert prompt == f"<fim_prefix>{COUNT_PREFIX}<fim_suffix>{COUNT_SUFFIX}<fim_middle>"
        assert middle.strip() and COUNT_SUFFIX.splitlines()[0] not in middle
    finally:
        app.models.unload()
