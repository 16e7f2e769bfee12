"""The llama.cpp loader on SmolLM2-135M-Instruct Q4_1: load, tokenizer, sampling, cancel, errors.

Reference results come from `llama_cpp.Llama` itself and from the GGUF header read with `gguf`, never from the
code under test.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import gguf  # noqa: E402

from loaders import llamacpp  # noqa: E402
from loaders.base import GenerationParams, LoadedModel  # noqa: E402
from loaders.errors import GenerationError, ModelFormatError, ModelNotLoadedError  # noqa: E402
from loaders.files import read_model_files  # noqa: E402
from loaders.settings import LlamaCppSettings  # noqa: E402
from webui.engine import generate  # noqa: E402

N_CTX = 512
PROMPT = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = GenerationParams(do_sample=False, max_new_tokens=16)  # few tokens: the CI machine has 2 shared cores


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[llamacpp.LlamaCppModel]:
    loaded = llamacpp.load(smollm2_gguf, LlamaCppSettings(n_ctx=N_CTX, threads=1), name="smollm2")
    yield loaded
    loaded.unload()


def run(model: llamacpp.LlamaCppModel, params: GenerationParams, prompt: str = PROMPT) -> list[int]:
    """Generate from an empty KV cache: a reused prefix re-evaluates the last prompt token alone, and llama.cpp's
    batch-of-one kernels round differently from its prompt-batch ones, so outputs could drift after a few tokens."""
    model.forget_prompts()
    ids = model.tokenizer.encode(prompt, add_bos=params.add_bos_token)
    return list(model.generate_tokens(ids, params, threading.Event()))


def header(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    keys = ("tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
    values = {key: reader.get_field(key).contents() for key in keys}
    values["tokens"] = reader.get_field("tokenizer.ggml.tokens").contents()
    return values


def test_load_reports_what_it_loaded(model: llamacpp.LlamaCppModel, smollm2_gguf: Path) -> None:
    assert isinstance(model, LoadedModel)
    assert (model.loader, model.path, model.context_length, model.device) == ("llama.cpp", smollm2_gguf, N_CTX, "cpu")
    assert model.memory.ram_bytes > 0 and model.memory.vram_bytes == {}
    assert model.load_seconds > 0


def test_folder_resolves_to_its_gguf(smollm2_gguf: Path, tmp_path: Path) -> None:
    assert read_model_files(smollm2_gguf.parent).gguf_path == smollm2_gguf
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (folder / name).hardlink_to(smollm2_gguf)
    assert read_model_files(folder).gguf_path == folder / "a.gguf"  # two Q4_1 files: the rule's quant, first by name
    assert read_model_files(folder, gguf_file="b.gguf").gguf_path == folder / "b.gguf"
    with pytest.raises(ModelFormatError, match="no GGUF file 'c.gguf'"):
        read_model_files(folder, gguf_file="c.gguf")


def test_greedy_equals_raw_llama(model: llamacpp.LlamaCppModel, smollm2_gguf: Path) -> None:
    raw = llama_cpp.Llama(str(smollm2_gguf), n_ctx=N_CTX, n_threads=1, verbose=False)
    prompt_ids = raw.tokenize(PROMPT.encode(), add_bos=True, special=True)
    expected = []
    for token in raw.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(raw.model), token):
            break
        expected.append(token)
        if len(expected) == GREEDY.max_new_tokens:
            break
    raw.close()
    assert model.tokenizer.encode(PROMPT, add_bos=True) == prompt_ids
    assert run(model, GREEDY) == expected


def test_tokenizer_metadata_comes_from_the_gguf(model: llamacpp.LlamaCppModel, smollm2_gguf: Path) -> None:
    meta = header(smollm2_gguf)
    tok = model.tokenizer
    assert tok.chat_template == meta["tokenizer.chat_template"]
    assert tok.bos_token_id == meta["tokenizer.ggml.bos_token_id"]
    assert tok.eos_token_ids[0] == meta["tokenizer.ggml.eos_token_id"]
    assert (tok.bos_token, tok.eos_token) == (meta["tokens"][tok.bos_token_id], meta["tokens"][tok.eos_token_ids[0]])
    im_start = meta["tokens"].index("<|im_start|>")
    assert tok.encode("<|im_start|>user", add_bos=False)[0] == im_start


def test_decode_round_trips_varied_text(model: llamacpp.LlamaCppModel) -> None:
    text = "def f(x):\n" + " " * 40 + "return x  # café, 東京, 🦙\n\n\n\tend"
    ids = model.tokenizer.encode(text, add_bos=False)
    assert model.tokenizer.decode(ids) == text
    special = model.tokenizer.encode("<|im_start|>hi<|im_end|>", add_bos=False)
    assert model.tokenizer.decode(special) == "hi"
    assert model.tokenizer.decode(special, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"


def test_seed_repeats_and_differs(model: llamacpp.LlamaCppModel) -> None:
    params = GenerationParams(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, seed=1234)
    first, again = run(model, params), run(model, params)
    other = run(model, GenerationParams(**{**params.__dict__, "seed": 99}))
    assert first == again
    assert other != first


def test_max_new_tokens_and_ban_eos(model: llamacpp.LlamaCppModel) -> None:
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    short = run(model, GenerationParams(do_sample=False, max_new_tokens=14), prompt)
    assert len(short) < 14  # stops at <|im_end|> by itself
    banned = run(model, GenerationParams(do_sample=False, max_new_tokens=14, ban_eos_token=True), prompt)
    assert len(banned) == 14
    assert banned[: len(short)] == short  # the same reply, continued past where EOS would have been
    assert not set(banned) & set(model.tokenizer.eos_token_ids)


def test_presence_penalty_covers_prompt_and_reply(model: llamacpp.LlamaCppModel) -> None:
    params = GenerationParams(do_sample=False, max_new_tokens=12, presence_penalty=100.0, repetition_penalty_range=0)
    prompt_ids = model.tokenizer.encode(PROMPT, add_bos=True)
    reply = run(model, params)
    assert len(set(reply)) == len(reply)  # no token twice
    assert not set(reply) & set(prompt_ids)  # and none from the prompt


def test_cancel_stops_between_tokens(model: llamacpp.LlamaCppModel) -> None:
    cancel = threading.Event()
    got = []
    model.forget_prompts()
    ids = model.tokenizer.encode(PROMPT, add_bos=True)
    for token in model.generate_tokens(ids, GenerationParams(do_sample=False, max_new_tokens=50), cancel):
        got.append(token)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3


def test_engine_stop_string_cuts_the_reply(model: llamacpp.LlamaCppModel) -> None:
    model.forget_prompts()
    full = generate(model, PROMPT, GREEDY)
    reference = "".join(full)
    stop = reference.split()[3]  # a word from the middle of the reply
    model.forget_prompts()
    cut = generate(model, PROMPT, GenerationParams(**{**GREEDY.__dict__, "stop": (stop,)}))
    assert "".join(cut) == reference[: reference.index(stop)]
    assert cut.stats.stop_reason == "stop_string" and cut.stats.new_tokens < full.stats.new_tokens


def test_engine_cancel_ends_the_stream(model: llamacpp.LlamaCppModel) -> None:
    cancel = threading.Event()
    reply = generate(model, PROMPT, GenerationParams(do_sample=False, max_new_tokens=50), cancel=cancel)
    for _delta in reply:
        cancel.set()
    assert reply.stats.stop_reason == "cancelled" and reply.stats.new_tokens <= 2


def test_prompt_longer_than_context(model: llamacpp.LlamaCppModel) -> None:
    with pytest.raises(GenerationError, match="context"):
        next(model.generate_tokens([1] * N_CTX, GREEDY, threading.Event()))


def test_truncated_file_names_itself(smollm2_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    with open(smollm2_gguf, "rb") as src, open(broken, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(smollm2_gguf.stat().st_size // 2)
    with pytest.raises(ModelFormatError) as caught:
        llamacpp.load(broken, LlamaCppSettings(n_ctx=N_CTX), name="broken")
    assert caught.value.path == broken and "broken.gguf" in str(caught.value)


def test_unloaded_model_refuses(smollm2_gguf: Path) -> None:
    loaded = llamacpp.load(smollm2_gguf, LlamaCppSettings(n_ctx=128, threads=1), name="smollm2")
    loaded.unload()
    with pytest.raises(ModelNotLoadedError):
        loaded.generate_tokens([1], GREEDY, threading.Event())
