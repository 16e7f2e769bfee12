"""Prompt templates: exact reference strings, the SmolLM2 model's own template against transformers, auto-selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from webui.errors import TemplateNotFoundError, TemplateRenderError
from webui.templates import MODEL_TEMPLATE, Message, PromptTemplate, TemplateRegistry, auto_select

S, U, A = "system", "user", "assistant"
SYS = "You are a pirate. Answer in one sentence."
ALPACA_DEFAULT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "webui" / "templates"


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


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llama-2-chat", "<s>[INST] Hi [/INST] Ahoy, mat"),
        ("alpaca", f"{ALPACA_DEFAULT}\n\n### Instruction:\nHi\n\n### Response:\nAhoy, mat"),
        ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAhoy, mat"),
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
    assert {"alpaca", "chatml", "codellama-instruct", "llama-2-chat", "mistral", "vicuna"} <= set(registry.names())
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
