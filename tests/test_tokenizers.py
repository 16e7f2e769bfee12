"""The one BOS rule (loaders/bos.py) in the three tokenizers: native GGUF, llama.cpp and Hugging Face.

On SmolLM2 (a GPT-2-style vocabulary whose GGUF says `add_bos_token: false`) all three give the same ids. Synthetic
GGUFs, SmolLM2's metadata rewritten without tensors, check the other cases against llama.cpp itself: a file that
asks for BOS gets exactly one, and a file that does not say gets llama.cpp's default for its vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys

from loaders.bos import gguf_adds_bos, prepend_bos
from loaders.gguf_tokenizer import GGUFTokenizer, TokenizerMetadata
from loaders.hf_tokenizer import HFTokenizer
from webui.templates import Message, TemplateRegistry

llama_cpp = pytest.importorskip("llama_cpp")

from loaders.llamacpp import LlamaCppTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONVERSATION = [Message("system", "You are brief."), Message("user", "Hi there!"), Message("assistant", "Hello.")]
PLAIN = "The quick brown fox, naïve café 🦊"  # no special token in it: a BOS can only come from the rule


def native(path: Path) -> GGUFTokenizer:
    return GGUFTokenizer.from_gguf(path, TokenizerMetadata.read(GGUFReader(path)))


def llama(path: Path) -> LlamaCppTokenizer:
    return LlamaCppTokenizer.from_llama(llama_cpp.Llama(str(path), vocab_only=True, verbose=False))


def rewrite(src: Path, dst: Path, changes: dict[str, object]) -> Path:
    """`src`'s metadata without its tensors; `changes` sets string/bool keys, None removes a key."""
    reader = GGUFReader(src)
    writer = GGUFWriter(str(dst), str(reader.get_field(Keys.General.ARCHITECTURE).contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == Keys.General.ARCHITECTURE or key in changes:
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for key, value in changes.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif value is not None:
            writer.add_string(key, str(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# --- SmolLM2: the three tokenizers agree ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path, smollm2_hf: Path) -> dict[str, object]:
    return {"native GGUF": native(smollm2_gguf), "llama.cpp": llama(smollm2_gguf),
            "transformers": HFTokenizer.from_folder(smollm2_hf)}  # fmt: skip


def smol_prompt(tokenizer: HFTokenizer) -> str:
    registry = TemplateRegistry(REPO / "webui" / "templates")
    template = registry.get("model", model_chat_template=tokenizer.chat_template)
    return template.render(CONVERSATION, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)


def test_smollm2_three_tokenizers_give_the_same_ids_with_add_bos(smol) -> None:
    prompt = smol_prompt(smol["transformers"])
    for text in (prompt, PLAIN):
        ids = {name: tokenizer.encode(text, add_bos=True) for name, tokenizer in smol.items()}
        assert len(set(map(tuple, ids.values()))) == 1, ids
        reference = smol["transformers"].encode(text, add_bos=False)
        assert ids["transformers"] == reference  # SmolLM2 asks for no BOS: add_bos=True adds nothing
    assert {tokenizer.bos_token_id for tokenizer in smol.values()} == {1}
    assert not any(tokenizer.adds_bos for tokenizer in smol.values())


def test_smollm2_llama_cpp_applies_the_same_rule_itself(smol, smollm2_gguf: Path) -> None:
    llm = smol["llama.cpp"].owner
    assert smol["llama.cpp"].encode(PLAIN, add_bos=True) == llm.tokenize(PLAIN.encode(), add_bos=True, special=True)
    assert TokenizerMetadata.read(GGUFReader(smollm2_gguf)).adds_bos is False  # the file's add_bos_token


# --- synthetic GGUFs: add_bos_token true, and absent ------------------------------------------------------------------


@pytest.fixture(scope="module")
def asks_bos(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rewrite(smollm2_gguf, tmp_path_factory.mktemp("bos") / "asks-bos.gguf", {Keys.Tokenizer.ADD_BOS: True})


def test_add_bos_token_true_gives_exactly_one_bos(asks_bos: Path) -> None:
    tokenizers = {"native GGUF": native(asks_bos), "llama.cpp": llama(asks_bos)}
    for name, tokenizer in tokenizers.items():
        bos = tokenizer.bos_token_id
        assert tokenizer.adds_bos, name
        plain = tokenizer.encode(PLAIN, add_bos=True)
        assert plain == [bos, *tokenizer.encode(PLAIN, add_bos=False)] and plain.count(bos) == 1, name
        # The text already starts with the BOS token's string (<|im_start|>): still one BOS, where llama.cpp's
        # own add_bos=True would make two.
        chat = tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n", add_bos=True)
        assert chat[0] == bos and chat[1] != bos, name
        assert tokenizer.encode(PLAIN, add_bos=False)[0] != bos, name  # asked not to: none
    llm = tokenizers["llama.cpp"].owner
    assert tokenizers["llama.cpp"].encode(PLAIN, add_bos=True) == llm.tokenize(PLAIN.encode(), add_bos=True)
    assert tokenizers["native GGUF"].encode(PLAIN, add_bos=True) == tokenizers["llama.cpp"].encode(PLAIN, add_bos=True)


def test_hf_tokenizer_that_adds_bos_gets_exactly_one(smol) -> None:
    llama_like = HFTokenizer(smol["transformers"].hf, adds_bos=True)
    assert llama_like.encode(PLAIN, add_bos=True) == [1, *llama_like.encode(PLAIN, add_bos=False)]
    assert llama_like.encode("<|im_start|>user\nHi", add_bos=True).count(1) == 1


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe"])
def test_absent_add_bos_token_follows_llama_cpps_default(smollm2_gguf: Path, tmp_path: Path, pre: str) -> None:
    path = rewrite(smollm2_gguf, tmp_path / f"{pre}.gguf", {Keys.Tokenizer.ADD_BOS: None, Keys.Tokenizer.PRE: pre})
    ours = TokenizerMetadata.read(GGUFReader(path)).adds_bos
    assert ours == llama(path).adds_bos == (pre == "llama-bpe")  # gpt2 BPE: no BOS, but Llama 3's BPE adds one


@pytest.mark.parametrize(
    ("value", "vocab", "pre", "expected"),
    [
        (None, "llama", None, True),  # SentencePiece
        (None, "bert", None, True),
        (None, "gpt2", "qwen2", False),
        (None, "gpt2", "llama-bpe", True),
        (None, "t5", None, False),
        (None, "rwkv", None, False),
        (False, "llama", None, False),  # the file's own key wins
        (True, "gpt2", "smollm", True),
    ],
)
def test_gguf_adds_bos(value, vocab, pre, expected) -> None:
    assert gguf_adds_bos(value, vocab, pre) is expected


def test_prepend_bos() -> None:
    assert prepend_bos([5, 6], 1, add=True) == [1, 5, 6]
    assert prepend_bos([1, 5], 1, add=True) == [1, 5]  # already there
    assert prepend_bos([5], 1, add=False) == [5]
    assert prepend_bos([5], None, add=True) == [5]
    assert prepend_bos([], 1, add=True) == [1]
