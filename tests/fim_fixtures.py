"""Fill-in-the-middle fixtures, built once and cached (`tests/realmodel.cache_root()`):

- `smollm2_starcoder_fim()`: SmolLM2-135M-Instruct with StarCoder's FIM tokens. SmolLM2's tokenizer is
  StarCoder-like but has none; four of its unused special tokens (ids 3, 4, 7, 8: `<repo_name>`, `<reponame>`,
  `<gh_stars>`, `<issue_start>`) are renamed `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, `<fim_pad>`, so the
  model runs unchanged (the weights are hard links) while its vocabulary holds the tokens;
- `smollm2_starcoder_fim_gguf()`: the same renaming in a copy of the GGUF, with llama.cpp's FIM id metadata;
- `codellama_style_tokenizer()`: a small SentencePiece-style (Metaspace BPE) tokenizer with CodeLlama's FIM tokens
  (`▁<PRE>`, `▁<SUF>`, `▁<MID>`, `▁<EOT>`, as CodeLlama's tokenizer.json spells them) and BOS `<s>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import realmodel

BUILD_VERSION = 2
RENAMED = {3: "<fim_prefix>", 4: "<fim_middle>", 7: "<fim_suffix>", 8: "<fim_pad>"}
CODELLAMA_FIM = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")


def _root() -> Path:
    return realmodel.cache_root(f"fim-b{BUILD_VERSION}")


def smollm2_starcoder_fim() -> Path:
    source = realmodel.smollm2_hf()

    def build(tmp: Path) -> None:
        from tests.conftest import link_tree

        link_tree(source, tmp)
        (tmp / "tokenizer.json").unlink()
        data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
        for token in data["added_tokens"]:
            token["content"] = RENAMED.get(token["id"], token["content"])
        vocab = data["model"]["vocab"]
        for token_id, text in RENAMED.items():
            old = next(k for k, v in vocab.items() if v == token_id)
            vocab[text] = vocab.pop(old)
        (tmp / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    return realmodel._build_once(_root() / "SmolLM2-StarCoder-FIM", build)


def smollm2_starcoder_fim_gguf() -> Path:
    """A copy of the Q4_1 GGUF whose vocabulary holds StarCoder's FIM tokens and whose metadata names their ids."""
    source = realmodel.smollm2_gguf()

    def build(tmp: Path) -> None:
        import gguf

        reader = gguf.GGUFReader(source)
        writer = gguf.GGUFWriter(tmp / "SmolLM2-FIM.Q4_1.gguf", reader.fields["general.architecture"].contents())
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            value = field.contents()
            if field.name == gguf.Keys.Tokenizer.LIST:
                value = [RENAMED.get(i, text) for i, text in enumerate(value)]
            writer.add_key_value(field.name, value, field.types[0], sub_type=field.types[-1] if len(field.types) > 1
                                 else None)  # fmt: skip
        for key, token_id in ((gguf.Keys.Tokenizer.FIM_PRE_ID, 3), (gguf.Keys.Tokenizer.FIM_MID_ID, 4),
                              (gguf.Keys.Tokenizer.FIM_SUF_ID, 7), (gguf.Keys.Tokenizer.FIM_PAD_ID, 8)):  # fmt: skip
            writer.add_uint32(key, token_id)
        for tensor in reader.tensors:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return realmodel._build_once(_root() / "SmolLM2-FIM-GGUF", build) / "SmolLM2-FIM.Q4_1.gguf"


CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "hello world, the quick brown fox jumps over the lazy dog",
]


def codellama_style_tokenizer() -> Path:
    def build(tmp: Path) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
        tokenizer.train_from_iterator(CORPUS * 20, trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", add_bos_token=True)  # fmt: skip
        fast.add_special_tokens({"additional_special_tokens": list(CODELLAMA_FIM)})
        fast.save_pretrained(tmp)

    return realmodel._build_once(_root() / "codellama-style-tokenizer", build)
