"""Prompt templates: exact reference strings, the SmolLM2 model's own template against transformers, auto-selection
from the name rules of models/config.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from loaders.errors import TemplateNotFoundError, TemplateRenderError
from webui.settings import SettingsStore
from webui.templates import (
    DEFAULT_TEMPLATE,
    MODEL_TEMPLATE,
    Message,
    PromptTemplate,
    TemplateRegistry,
    auto_select,
    config_path,
    name_rules,
)

S, U, A = "system", "user", "assistant"
SYS = "You are a pirate. Answer in one sentence."
ALPACA_DEFAULT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
REPO = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO / "webui" / "templates"


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role, content) for role, content in pairs]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry(TEMPLATES_DIR)


# --- Llama-2 chat ----------------------------------------------------------------------------------------------------


def meta_llama2_reference(dialog: list[Message], bos: str = "<s>", eos: str = "</s>") -> str:
    """The string Meta's `Llama.chat_completion` encodes (llama/generation.py), written out independently: the system
    prompt joins the first user message inside <<SYS>> markers; each exchange is BOS [INST] u [/INST] a EOS."""
    turns = [(m.role, m.content) for m in dialog]
    if turns and turns[0][0] == S:
        turns = [(U, f"<<SYS>>\n{turns[0][1]}\n<</SYS>>\n\n{turns[1][1]}"), *turns[2:]]
    out = ""
    for i in range(0, len(turns) - 1, 2):
        out += f"{bos}[INST] {turns[i][1].strip()} [/INST] {turns[i + 1][1].strip()} {eos}"
    return out + f"{bos}[INST] {turns[-1][1].strip()} [/INST]"


LLAMA2_CASES = [
    (msgs((U, "Hi")), "<s>[INST] Hi [/INST]"),
    (msgs((S, SYS), (U, "Hi")), f"<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nHi [/INST]"),
    (
        msgs((U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?")),
        "<s>[INST] Hi [/INST] Ahoy! </s><s>[INST] Where is the gold? [/INST]",
    ),
    (
        msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?")),
        f"<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nHi [/INST] Ahoy! </s><s>[INST] Where is the gold? [/INST]",
    ),
    (
        msgs((U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?"), (A, "Buried."), (U, "Where?")),
        "<s>[INST] Hi [/INST] Ahoy! </s><s>[INST] Where is the gold? [/INST] Buried. </s><s>[INST] Where? [/INST]",
    ),
    (
        msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?"), (A, "Buried."), (U, "Where?")),
        f"<s>[INST] <<SYS>>\n{SYS}\n<</SYS>>\n\nHi [/INST] Ahoy! </s><s>[INST] Where is the gold? [/INST] Buried. </s>"
        "<s>[INST] Where? [/INST]",
    ),
]


@pytest.mark.parametrize("name", ["llama-2-chat", "codellama-instruct"])
@pytest.mark.parametrize(("messages", "expected"), LLAMA2_CASES)
def test_llama2_and_codellama_match_reference(registry, name, messages, expected) -> None:
    rendered = registry.get(name).render(messages)
    assert rendered == expected
    assert rendered == meta_llama2_reference(messages)
    assert rendered.count("<s>") == sum(m.role == U for m in messages)  # one BOS per exchange, never doubled


def test_llama2_uses_the_tokenizers_bos_eos_strings_and_strips_text(registry) -> None:
    rendered = registry.get("llama-2-chat").render(
        msgs((U, "  Hi\n"), (A, " Ahoy! "), (U, "More")), bos_token="<BOS>", eos_token="<EOS>"
    )
    assert rendered == "<BOS>[INST] Hi [/INST] Ahoy! <EOS><BOS>[INST] More [/INST]"


def test_codellama_instruct_model_card_example(registry) -> None:
    messages = msgs((S, "Provide answers in Python"), (U, "Write a function that adds two numbers."))
    assert registry.get("codellama-instruct").render(messages) == (
        "<s>[INST] <<SYS>>\nProvide answers in Python\n<</SYS>>\n\nWrite a function that adds two numbers. [/INST]"
    )


def test_llama2_rejects_roles_that_do_not_alternate(registry) -> None:
    with pytest.raises(TemplateRenderError, match="alternate"):
        registry.get("llama-2-chat").render(msgs((U, "a"), (U, "b")))


# --- Alpaca, ChatML, Vicuna, Mistral ---------------------------------------------------------------------------------


def test_alpaca_default_system_line(registry) -> None:
    assert registry.get("alpaca").render(msgs((U, "Name three colors."))) == (
        f"{ALPACA_DEFAULT}\n\n### Instruction:\nName three colors.\n\n### Response:\n"
    )


def test_alpaca_multi_turn_with_system(registry) -> None:
    rendered = registry.get("alpaca").render(msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Gold?")))
    assert rendered == (
        f"{SYS}\n\n### Instruction:\nHi\n\n### Response:\nAhoy!\n\n### Instruction:\nGold?\n\n### Response:\n"
    )


def test_alpaca_matches_stanford_prompt_up_to_the_response_header(registry) -> None:
    # tatsu-lab/stanford_alpaca PROMPT_DICT["prompt_no_input"], filled in.
    stanford = f"{ALPACA_DEFAULT}\n\n### Instruction:\nGive a tip.\n\n### Response:"
    assert registry.get("alpaca").render(msgs((U, "Give a tip."))) == stanford + "\n"


def test_chatml(registry) -> None:
    rendered = registry.get("chatml").render(msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Gold?")))
    assert rendered == (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAhoy!<|im_end|>\n"
        "<|im_start|>user\nGold?<|im_end|>\n<|im_start|>assistant\n"
    )
    only_user = registry.get("chatml").render(msgs((U, "Hi")), add_generation_prompt=False)
    assert only_user == "<|im_start|>user\nHi<|im_end|>\n"


def test_vicuna_and_mistral(registry) -> None:
    conversation = msgs((U, "Hi"), (A, "Hello."), (U, "Bye"))
    assert registry.get("vicuna").render(conversation) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:"
    )
    assert registry.get("mistral").render(conversation) == "<s>[INST] Hi [/INST]Hello.</s>[INST] Bye [/INST]"


# --- Llama 3, Zephyr, Gemma, Phi-3: the model cards' formats, written out by hand -------------------------------------
# Two exchanges ("Hi" / "Ahoy!" then "Where is the gold?" awaiting the reply), with and without a system prompt, and
# each family's own BOS / EOS strings (the engine passes the tokenizer's).

TWO_TURNS = msgs((U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?"))
TWO_TURNS_SYS = msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Where is the gold?"))
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
ZEPHYR = {"bos_token": "<s>", "eos_token": "</s>"}
GEMMA = {"bos_token": "<bos>", "eos_token": "<eos>"}
PHI3 = {"bos_token": "<s>", "eos_token": "<|endoftext|>"}


def _llama3_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


NEW_TEMPLATE_CASES = [
    (
        "llama-3-instruct", LLAMA3, TWO_TURNS,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is the gold?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "llama-3-instruct", LLAMA3, TWO_TURNS_SYS,
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYS}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nAhoy!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is the gold?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "zephyr", ZEPHYR, TWO_TURNS,
        "<|user|>\nHi</s>\n<|assistant|>\nAhoy!</s>\n<|user|>\nWhere is the gold?</s>\n<|assistant|>\n",
    ),
    (
        "zephyr", ZEPHYR, TWO_TURNS_SYS,
        f"<|system|>\n{SYS}</s>\n<|user|>\nHi</s>\n<|assistant|>\nAhoy!</s>\n"
        "<|user|>\nWhere is the gold?</s>\n<|assistant|>\n",
    ),
    (
        "gemma", GEMMA, TWO_TURNS,
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nAhoy!<end_of_turn>\n"
        "<start_of_turn>user\nWhere is the gold?<end_of_turn>\n<start_of_turn>model\n",
    ),
    (  # Gemma 3's way: the system prompt opens the first user turn
        "gemma", GEMMA, TWO_TURNS_SYS,
        f"<bos><start_of_turn>user\n{SYS}\n\nHi<end_of_turn>\n<start_of_turn>model\nAhoy!<end_of_turn>\n"
        "<start_of_turn>user\nWhere is the gold?<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "phi-3", PHI3, TWO_TURNS,
        "<|user|>\nHi<|end|>\n<|assistant|>\nAhoy!<|end|>\n<|user|>\nWhere is the gold?<|end|>\n<|assistant|>\n",
    ),
    (
        "phi-3", PHI3, TWO_TURNS_SYS,
        f"<|system|>\n{SYS}<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nAhoy!<|end|>\n"
        "<|user|>\nWhere is the gold?<|end|>\n<|assistant|>\n",
    ),
]


@pytest.mark.parametrize(
    ("name", "tokens", "messages", "expected"),
    NEW_TEMPLATE_CASES,
    ids=[f"{case[0]}-{'system' if case[2][0].role == S else 'no-system'}" for case in NEW_TEMPLATE_CASES],
)
def test_new_templates_match_the_model_cards(registry, name, tokens, messages, expected) -> None:
    assert registry.get(name).render(messages, **tokens) == expected


def test_llama3_strips_text_and_writes_bos_once(registry) -> None:
    conversation = msgs((U, " Hi\n"), (A, "Ahoy! "))
    rendered = registry.get("llama-3-instruct").render(conversation, add_generation_prompt=False, **LLAMA3)
    assert rendered == f"<|begin_of_text|>{_llama3_header(U)}Hi<|eot_id|>{_llama3_header(A)}Ahoy!<|eot_id|>"


def test_zephyr_and_phi3_keep_text_as_is_and_end_without_generation_prompt(registry) -> None:
    conversation = msgs((U, " Hi "), (A, "Ahoy!"))
    zephyr = registry.get("zephyr").render(conversation, add_generation_prompt=False, **ZEPHYR)
    assert zephyr == "<|user|>\n Hi </s>\n<|assistant|>\nAhoy!</s>\n"
    phi3 = registry.get("phi-3").render(conversation, add_generation_prompt=False, **PHI3)
    assert phi3 == "<|user|>\n Hi <|end|>\n<|assistant|>\nAhoy!<|end|>\n<|endoftext|>"  # EOS closes the text


def test_gemma_rejects_roles_that_do_not_alternate(registry) -> None:
    with pytest.raises(TemplateRenderError, match="alternate"):
        registry.get("gemma").render(msgs((U, "a"), (U, "b")), **GEMMA)
    with pytest.raises(TemplateRenderError, match="alternate"):  # a system prompt only comes first
        registry.get("gemma").render(msgs((U, "a"), (S, "b")), **GEMMA)


@pytest.mark.parametrize(
    ("name", "stops"),
    [
        ("llama-3-instruct", {"<|eot_id|>"}),
        ("zephyr", {"<|user|>"}),
        ("gemma", {"<end_of_turn>"}),
        ("phi-3", {"<|end|>", "<|endoftext|>"}),
    ],
)
def test_new_templates_stop_at_the_end_of_turn(registry, name, stops) -> None:
    assert stops <= set(registry.get(name).stop)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-2-chat", "<s>[INST] Hi [/INST] Ahoy, mat"),
        ("alpaca", f"{ALPACA_DEFAULT}\n\n### Instruction:\nHi\n\n### Response:\nAhoy, mat"),
        ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAhoy, mat"),
        ("llama-3-instruct", f"<s>{_llama3_header(U)}Hi<|eot_id|>{_llama3_header(A)}Ahoy, mat"),
        ("zephyr", "<|user|>\nHi</s>\n<|assistant|>\nAhoy, mat"),
        ("gemma", "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nAhoy, mat"),
        ("phi-3", "<|user|>\nHi<|end|>\n<|assistant|>\nAhoy, mat"),
    ],
)
def test_continue_last_ends_with_the_partial_reply(registry, name, expected) -> None:
    assert registry.get(name).render(msgs((U, "Hi"), (A, "Ahoy, mat")), continue_last=True) == expected


# --- the model's own template (SmolLM2) against transformers ---------------------------------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_hf: Path):
    return AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.fixture(scope="module")
def smol_template(smollm2_hf: Path) -> str:
    return (smollm2_hf / "chat_template.jinja").read_text(encoding="utf-8")


CONVERSATIONS = [
    msgs((U, "What is 2+2?")),
    msgs((S, SYS), (U, "Hi")),
    msgs((U, "Hi"), (A, "Hello! How can I help?"), (U, "Tell me a joke about \"quotes\" & <tags>.")),
    msgs((S, SYS), (U, "Hi"), (A, "Ahoy!"), (U, "Gold?"), (A, "Buried."), (U, "Where?")),
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_own_template_equals_transformers(
    registry, smol_tokenizer, smol_template, messages, add_generation_prompt
) -> None:
    ours = registry.get(MODEL_TEMPLATE, model_chat_template=smol_template).render(
        messages, add_generation_prompt=add_generation_prompt,
        bos_token=smol_tokenizer.bos_token, eos_token=smol_tokenizer.eos_token,
    )  # fmt: skip
    reference = smol_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False, add_generation_prompt=add_generation_prompt,
    )  # fmt: skip
    assert ours == reference


def test_smollm2_continue_equals_transformers_continue_final_message(registry, smol_tokenizer, smol_template) -> None:
    messages = msgs((U, "Count to five."), (A, "One, two,"))
    ours = registry.get(MODEL_TEMPLATE, model_chat_template=smol_template).render(messages, continue_last=True)
    reference = smol_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=False, continue_final_message=True
    )
    assert ours == reference
    assert ours.endswith("<|im_start|>assistant\nOne, two,")


@pytest.mark.parametrize("messages", [m for m in CONVERSATIONS if m[0].role == S])
def test_our_chatml_equals_smollm2_template_when_a_system_prompt_is_given(registry, smol_tokenizer, messages) -> None:
    # SmolLM2's template only differs from plain ChatML by the default system prompt it adds when none is given.
    reference = smol_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert registry.get("chatml").render(messages) == reference


def test_smollm2_template_adds_its_default_system_prompt(registry, smol_template) -> None:
    rendered = registry.get(MODEL_TEMPLATE, model_chat_template=smol_template).render(msgs((U, "Hi")))
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


# --- Jinja environment like transformers -----------------------------------------------------------------------------


def test_environment_has_transformers_helpers() -> None:
    source = (
        "{{ messages[0]['content'] | tojson }}|{{ strftime_now('%Y') | length }}"
        "{% for m in messages %}{% generation %}[{{ m.role }}]{% endgeneration %}{% endfor %}"
    )
    rendered = PromptTemplate("t", source).render(msgs((U, "<b>&é</b>")))
    assert rendered == '"<b>&é</b>"|4[user]'  # tojson neither escapes HTML nor non-ASCII


def test_trim_and_lstrip_blocks_like_transformers() -> None:
    source = "{% for m in messages %}\n    {% if m.role == 'user' %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}"
    assert PromptTemplate("t", source).render(msgs((U, "a"), (U, "b"))) == "a\nb\n"


def test_sandbox_blocks_escapes() -> None:
    with pytest.raises(TemplateRenderError):
        PromptTemplate("evil", "{{ ''.__class__.__mro__[1].__subclasses__() }}").render(msgs((U, "x")))


def test_raise_exception_and_syntax_errors_are_render_errors(registry) -> None:
    with pytest.raises(TemplateRenderError, match="no system"):
        PromptTemplate("t", "{{ raise_exception('no system please') }}").render(msgs((U, "x")))
    with pytest.raises(TemplateRenderError, match="not valid Jinja"):
        registry.get(MODEL_TEMPLATE, model_chat_template="{% for m in messages %}")


# --- registry and auto-selection -------------------------------------------------------------------------------------


def test_registry_lists_the_shipped_templates(registry) -> None:
    assert {
        "alpaca", "chatml", "codellama-instruct", "gemma", "llama-2-chat", "llama-3-instruct", "mistral", "phi-3",
        "vicuna", "zephyr",
    } <= set(registry.names())  # fmt: skip
    for name in registry.names():
        registry.get(name).render(msgs((U, "Hi"), (A, "Hello"), (U, "Bye")))


def test_unknown_template_names_the_known_ones(registry) -> None:
    with pytest.raises(TemplateNotFoundError) as caught:
        registry.get("no-such-template")
    message = str(caught.value)
    assert "no-such-template" in message and "alpaca" in message and "llama-2-chat" in message


def test_model_template_missing_is_a_clear_error(registry) -> None:
    with pytest.raises(TemplateNotFoundError, match="ships no chat template"):
        registry.get(MODEL_TEMPLATE, model_chat_template=None)


def test_malformed_template_file_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("template: [unclosed\n", encoding="utf-8")
    (tmp_path / "nokey.yaml").write_text("description: no template here\n", encoding="utf-8")
    registry = TemplateRegistry(tmp_path)
    for name in ("broken", "nokey"):
        with pytest.raises(TemplateRenderError, match=f"{name}.yaml"):
            registry.get(name)


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("CodeLlama-7b-Instruct-hf", "codellama-instruct"),
        ("TheBloke_CodeLlama-13B-Instruct-GPTQ", "codellama-instruct"),
        ("Llama-2-7b-chat-hf", "llama-2-chat"),
        ("llama2-13b-chat.Q4_K_M.gguf", "llama-2-chat"),
        ("Mistral-7B-Instruct-v0.2", "mistral"),
        ("Mixtral-8x7B-Instruct-v0.1-GPTQ", "mistral"),
        ("Meta-Llama-3-8B-Instruct", "llama-3-instruct"),
        ("Llama-3.2-1B-Instruct-Q4_K_M-GGUF", "llama-3-instruct"),
        ("llama3-8b-chat", "llama-3-instruct"),
        ("upstage_llama-30b-instruct-2048", "alpaca"),  # Llama 1 30B, not Llama 3
        ("zephyr-7b-beta", "zephyr"),
        ("gemma-2-9b-it-GGUF", "gemma"),
        ("gemma-2b", "alpaca"),  # the base model is not the instruct one
        ("Phi-3-mini-4k-instruct", "phi-3"),
        ("Phi-3.5-mini-instruct", "phi-3"),
        ("vicuna-7b-v1.5", "vicuna"),
        ("alpaca-native-7b", "alpaca"),
        ("Qwen2.5-0.5B-Instruct", "chatml"),
        ("SmolLM2-135M-Instruct-GGUF", "chatml"),
        ("OpenHermes-2.5-Mistral-7B", "chatml"),
        ("gpt2", "alpaca"),
        ("CodeLlama-7b-hf", "alpaca"),  # the base model is not the instruct one
    ],
)
def test_auto_select_by_name(model_name, expected) -> None:
    assert auto_select(model_name, None) == expected


def test_auto_select_prefers_the_models_own_template(registry, smol_template) -> None:
    assert auto_select("Llama-2-7b-chat-hf", smol_template) == MODEL_TEMPLATE
    resolved = registry.resolve("auto", model_name="SmolLM2-135M-Instruct", model_chat_template=smol_template)
    assert resolved.name == MODEL_TEMPLATE and resolved.source == smol_template
    assert registry.resolve("auto", model_name="Llama-2-7b-chat-hf", model_chat_template=None).name == "llama-2-chat"


# --- the names other places use exist -------------------------------------------------------------------------------


def _config_template_names(path: Path) -> set[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {values["template"] for values in data.values() if isinstance(values, dict) and "template" in values}


def test_every_template_named_in_models_config_exists(registry) -> None:
    named = _config_template_names(REPO / "models" / "config.yaml")
    assert len(named) >= 10  # the file was read
    assert named - set(registry.names()) == set()
    for name in named:
        registry.get(name).render(msgs((U, "Hi")))


def test_models_config_patterns_pick_the_template_auto_select_picks() -> None:
    # Both are name rules for the same models: they must not send one model to two different formats.
    data = yaml.safe_load((REPO / "models" / "config.yaml").read_text(encoding="utf-8"))
    for model_name in ("meta-llama-3-8b-instruct", "zephyr-7b-beta", "gemma-7b-it", "phi-3-mini-4k-instruct",
                       "mistral-7b-instruct-v0.2", "llama-2-7b-chat-hf", "codellama-7b-instruct-hf",
                       "openhermes-2.5-mistral-7b-instruct"):  # two patterns match that one: the later wins
        templates = [v["template"] for k, v in data.items() if "template" in v and re.match(k, model_name, re.I)]
        assert templates and templates[-1] == auto_select(model_name, None), model_name


def test_name_rules_are_the_template_values_of_models_config(registry) -> None:
    data = yaml.safe_load((REPO / "models" / "config.yaml").read_text(encoding="utf-8"))
    expected = [(k, v["template"]) for k, v in data.items() if isinstance(v, dict) and "template" in v]
    assert name_rules() == expected and len(expected) >= 10
    assert {name for _, name in expected} | {DEFAULT_TEMPLATE} <= set(registry.names())


# --- a models folder's own config.yaml: the file settings read is the file "auto" reads -----------------------------


def test_auto_select_reads_the_models_folders_own_config(tmp_path: Path) -> None:
    assert config_path(tmp_path) == config_path(None) == REPO / "models" / "config.yaml"
    (tmp_path / "config.yaml").write_text(".*smol:\n  template: zephyr\n'(bad':\n  template: gemma\n")
    assert config_path(tmp_path) == tmp_path / "config.yaml" == SettingsStore(tmp_path).defaults_path
    assert auto_select("SmolLM2-135M-Instruct", None, models_dir=tmp_path) == "zephyr"  # the bad pattern is skipped
    assert auto_select("SmolLM2-135M-Instruct", None) == "chatml"  # the shipped file
    assert auto_select("Llama-2-7b-chat-hf", None, models_dir=tmp_path) == DEFAULT_TEMPLATE  # not in that file
    registry = TemplateRegistry(TEMPLATES_DIR, models_dir=tmp_path)
    assert registry.resolve("auto", model_name="SmolLM2-135M-Instruct", model_chat_template=None).name == "zephyr"
    assert TemplateRegistry(TEMPLATES_DIR).resolve("", model_name="smollm2", model_chat_template=None).name == "chatml"


@pytest.mark.parametrize("content", ["[unclosed\n", "- a list\n", ".*smol: chatml\n"])
def test_an_unusable_config_gives_the_default_template(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.yaml").write_text(content)
    assert auto_select("SmolLM2-135M-Instruct", None, models_dir=tmp_path) == DEFAULT_TEMPLATE


# --- rendering is transformers' --------------------------------------------------------------------------------------


def test_extra_variables_reach_the_template() -> None:
    template = PromptTemplate("t", "{{ bos_token }}{% if enable_thinking %}<think>{% endif %}{{ messages[0].content }}")
    assert template.render(msgs((U, "x")), bos_token="<B>", variables={"enable_thinking": True}) == "<B><think>x"
    assert template.render(msgs((U, "x")), bos_token="<B>") == "<B>x"


def test_transformers_globals_are_there() -> None:
    source = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    assert PromptTemplate("t", source).render(msgs((U, "a"), (A, "b"))) == "2"


def test_continue_errors_name_the_template() -> None:
    with pytest.raises(TemplateRenderError, match="no message to continue"):
        PromptTemplate("t", "{{ messages }}").render([], continue_last=True)
    dropping = PromptTemplate("drops", "{% for m in messages %}{{ m.role }}{% if m.content %}.{% endif %}{% endfor %}")
    with pytest.raises(TemplateRenderError, match="'drops' drops or rewrites the last message"):
        dropping.render(msgs((U, "Hi"), (A, "Ahoy")), continue_last=True)
    failing = PromptTemplate("fails", "{{ raise_exception('no way') }}{{ messages[0].content }}")
    with pytest.raises(TemplateRenderError, match="'fails' failed to render: no way"):
        failing.render(msgs((U, "Hi")), continue_last=True)
