"""Chat prompts in the three modes, stop strings, and the chat operations (regenerate, continue, remove last)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loaders.errors import GenerationError, TemplateNotFoundError
from webui import chat_prompt as cp
from webui.history import Chat
from webui.templates import Message, TemplateRegistry

TEMPLATES = TemplateRegistry(Path(__file__).resolve().parent.parent / "webui" / "templates")
COMMAND = 'Continue the chat dialogue below. Write a single reply for the character "Bob".'


def conversation(mode: str, template: str = "llama-2-chat", system: str = "Bob is a pirate.") -> Chat:
    chat = Chat(id="t", mode=mode, template=template, system_prompt=system,  # type: ignore[arg-type]
                user_name="Ann", bot_name="Bob")
    chat = cp.add_user_message(chat, "Hi")
    chat = cp.set_reply(chat, " Ahoy!")
    return cp.add_user_message(chat, "Where is the gold?")


def test_instruct_mode_is_the_template_over_system_and_messages() -> None:
    prompt = cp.build_prompt(conversation("instruct"), TEMPLATES)
    assert prompt == (
        "<s>[INST] <<SYS>>\nBob is a pirate.\n<</SYS>>\n\nHi [/INST] Ahoy! </s><s>[INST] Where is the gold? [/INST]"
    )


def test_instruct_mode_without_system_prompt() -> None:
    prompt = cp.build_prompt(conversation("instruct", template="chatml", system=""), TEMPLATES)
    assert prompt == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n Ahoy!<|im_end|>\n"
        "<|im_start|>user\nWhere is the gold?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_mode_is_a_plain_transcript() -> None:
    chat = conversation("chat")
    assert cp.build_prompt(chat, TEMPLATES) == "Bob is a pirate.\n\nAnn: Hi\nBob: Ahoy!\nAnn: Where is the gold?\nBob:"
    assert cp.stop_strings(chat) == ("\nAnn:", "\nBob:")


def test_chat_mode_without_context() -> None:
    prompt = cp.build_prompt(conversation("chat", system=""), TEMPLATES)
    assert prompt == "Ann: Hi\nBob: Ahoy!\nAnn: Where is the gold?\nBob:"


def test_chat_instruct_wraps_the_transcript_in_the_instruct_template() -> None:
    chat = conversation("chat-instruct", template="alpaca")
    transcript = "Bob is a pirate.\n\nAnn: Hi\nBob: Ahoy!\nAnn: Where is the gold?"
    assert cp.build_prompt(chat, TEMPLATES) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{COMMAND}\n\n{transcript}\n\n### Response:\nBob:"
    )
    template = cp.resolve_template(chat, TEMPLATES)
    assert cp.stop_strings(chat, template) == ("\nAnn:", "\nBob:", "\n### Instruction:")


def test_chat_instruct_with_llama2() -> None:
    prompt = cp.build_prompt(conversation("chat-instruct", system=""), TEMPLATES)
    assert prompt == f"<s>[INST] {COMMAND}\n\nAnn: Hi\nBob: Ahoy!\nAnn: Where is the gold? [/INST] Bob:"


@pytest.fixture(scope="module")
def smol(smollm2_hf: Path):
    return AutoTokenizer.from_pretrained(smollm2_hf)


def test_auto_template_uses_the_models_own_and_equals_transformers(smol) -> None:
    chat = conversation("instruct", template="auto")
    prompt = cp.build_prompt(chat, TEMPLATES, model_chat_template=smol.chat_template, model_name="SmolLM2",
                             bos_token=smol.bos_token, eos_token=smol.eos_token)  # fmt: skip
    reference = smol.apply_chat_template(
        [{"role": "system", "content": chat.system_prompt}]
        + [{"role": m.role, "content": m.content} for m in chat.messages],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert prompt == reference


def test_chat_instruct_with_the_models_template_equals_transformers_continue(smol) -> None:
    chat = conversation("chat-instruct", template="model")
    prompt = cp.build_prompt(chat, TEMPLATES, model_chat_template=smol.chat_template)
    transcript = "Bob is a pirate.\n\nAnn: Hi\nBob: Ahoy!\nAnn: Where is the gold?"
    reference = smol.apply_chat_template(
        [{"role": "user", "content": f"{COMMAND}\n\n{transcript}"}, {"role": "assistant", "content": "Bob:"}],
        tokenize=False, continue_final_message=True,
    )  # fmt: skip
    assert prompt == reference
    assert prompt.endswith("<|im_start|>assistant\nBob:")


def test_model_template_missing_is_an_error() -> None:
    with pytest.raises(TemplateNotFoundError):
        cp.build_prompt(conversation("instruct", template="model"), TEMPLATES, model_chat_template=None)


# --- operations -------------------------------------------------------------------------------------------------------


def test_first_user_message_names_the_chat_and_set_reply_replaces_while_streaming() -> None:
    chat = Chat(id="t", mode="chat")
    chat = cp.add_user_message(chat, "Tell me\nabout   ships")
    assert chat.title == "Tell me about ships"
    chat = cp.set_reply(chat, " A")
    chat = cp.set_reply(chat, " A ship")
    assert chat.messages == [Message("user", "Tell me\nabout   ships"), Message("assistant", "A ship")]
    assert cp.add_user_message(chat, "more").title == "Tell me about ships"


def test_operations_are_pure() -> None:
    chat = conversation("chat")
    before = list(chat.messages)
    cp.set_reply(chat, "x")
    cp.remove_last(chat)
    cp.clear_messages(chat)
    assert chat.messages == before


@pytest.mark.parametrize("mode", ["chat", "chat-instruct", "instruct"])
def test_continue_prompt_ends_with_the_partial_reply(mode: str) -> None:
    chat = cp.set_reply(conversation(mode, template="chatml"), "It is buried")
    prompt = cp.build_prompt(chat, TEMPLATES, continue_last=True)
    assert prompt.endswith("Bob: It is buried" if mode != "instruct" else "<|im_start|>assistant\nIt is buried")
    assert "<|im_end|>" not in prompt[prompt.rindex("It is buried") :]
    assert cp.build_prompt(cp.append_reply(chat, " on the island"), TEMPLATES, continue_last=True).endswith(
        "It is buried on the island"
    )


def test_continue_in_chat_mode_full_string() -> None:
    chat = cp.set_reply(conversation("chat", system=""), "It is")
    prompt = cp.build_prompt(chat, TEMPLATES, continue_last=True)
    assert prompt == "Ann: Hi\nBob: Ahoy!\nAnn: Where is the gold?\nBob: It is"


def test_continue_needs_a_reply() -> None:
    with pytest.raises(GenerationError, match="Nothing to continue"):
        cp.build_prompt(conversation("chat"), TEMPLATES, continue_last=True)
    with pytest.raises(GenerationError):
        cp.append_reply(conversation("chat"), "x")


def test_regenerate_drops_only_the_last_reply() -> None:
    chat = cp.set_reply(conversation("chat", system=""), "Under the palm.")
    regenerated = cp.prepare_regenerate(chat)
    assert regenerated.messages == chat.messages[:-1]
    assert cp.build_prompt(regenerated, TEMPLATES) == "Ann: Hi\nBob: Ahoy!\nAnn: Where is the gold?\nBob:"
    assert cp.prepare_regenerate(regenerated) is regenerated  # last is the user's: answer it again
    with pytest.raises(GenerationError, match="Nothing to regenerate"):
        cp.prepare_regenerate(Chat(id="t"))


def test_remove_last_removes_the_exchange_and_returns_the_users_text() -> None:
    chat = cp.set_reply(conversation("chat"), "Under the palm.")
    shorter, text = cp.remove_last(chat)
    assert text == "Where is the gold?"
    assert shorter.messages == [Message("user", "Hi"), Message("assistant", "Ahoy!")]
    unanswered, text = cp.remove_last(conversation("chat"))  # no reply yet: only the user's message goes
    assert text == "Where is the gold?" and len(unanswered.messages) == 2
    empty = Chat(id="t")
    assert cp.remove_last(empty) == (empty, "")


def test_nothing_to_answer_in_an_empty_chat() -> None:
    with pytest.raises(GenerationError):
        cp.build_prompt(Chat(id="t"), TEMPLATES)


def test_instruct_mode_keeps_reply_text_as_generated() -> None:
    chat = cp.set_reply(cp.add_user_message(Chat(id="t", mode="instruct"), "Hi"), "  indented code")
    assert chat.messages[-1].content == "  indented code"
    assert cp.stop_strings(chat, TEMPLATES.get("chatml")) == ("<|im_end|>", "<|im_start|>")
