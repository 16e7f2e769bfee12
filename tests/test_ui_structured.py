"""The Parameters tab's reply format (JSON schema / grammar) and the Model tab's switch for API loads (issue 19 items
1 and 5), through the handlers as the browser calls them.

The reply format runs on the real SmolLM2 GGUF in llama.cpp: a JSON schema set in the Parameters values holds a
Notebook and a Chat reply to it, a GBNF grammar holds a reply to its two words, and a broken schema is an "Error:"
line before anything runs. The switch is checked against a running API: a request naming another model is refused,
the switch is turned on through its handler, and the same request loads that model and is answered by it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest

from loaders.base import GenerationParams
from tests.conftest import link_tree
from tests.test_api import free_port
from webui.api import ApiServer
from webui.state import AppConfig, AppState
from webui.ui import chat_handlers as chat
from webui.ui import model_handlers, notebook, parameters
from webui.ui.notebook_fill import CONTINUE
from webui.ui.parameters import values_of
from webui.ui.wiring import Ctx

GGUF = "SmolLM2-GGUF"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "color": {"enum": ["red", "green", "blue"]},
        "likes_cats": {"type": "boolean"},
    },
    "required": ["name", "color", "likes_cats"],
    "additionalProperties": False,
}
SCHEMA = {"mode": "json_schema", "text": json.dumps(PERSON, indent=2)}  # as typed in the code box
BROKEN = {"mode": "json_schema", "text": '{"type": "object", "properties": {'}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[AppState]:
    root = tmp_path_factory.mktemp("ui-structured")
    link_tree(smollm2_gguf.parent, root / "models" / GGUF)
    state = AppState(config=AppConfig(models_dir=root / "models", user_data_dir=root / "data"))
    state.models.load(GGUF, loader_settings={"n_ctx": 1024}, confirm_memory=True)
    yield state
    state.models.unload()


def params(reply_format: dict | None) -> dict:
    """The Parameters values a Chat or Notebook event sends (`ParamControls.inputs`)."""
    return values_of(GenerationParams(max_new_tokens=80, do_sample=False)) | {"constraint": reply_format}


def notebook_values(text: str, reply_format: dict | None) -> dict:
    return {"text": text, "mode": CONTINUE, "before": "", "params": params(reply_format)}


def chat_values(message: str, reply_format: dict | None) -> dict:
    return {"message": message, "ref": {"id": None, "revision": 0}, "query": "", "params": params(reply_format),
            "settings": {"mode": "instruct", "template": "auto", "system": "", "user_name": "You",
                         "bot_name": "Assistant"}}  # fmt: skip


def last_with(updates: Iterator[dict], key: str) -> dict:
    return [update for update in updates if key in update][-1]


def test_a_json_schema_in_the_parameters_holds_notebook_and_chat_replies_to_it(app: AppState) -> None:
    prompt = "A person, described as JSON: "
    final = last_with(notebook.on_generate(app, notebook_values(prompt, SCHEMA), Ctx("nb")), "text")
    assert final["text"].startswith(prompt) and "tokens/s" in final["status"]
    jsonschema.validate(json.loads(final["text"][len(prompt) :]), PERSON)

    sent = last_with(chat.on_send(app, chat_values("Describe a person.", SCHEMA), Ctx("chat")), "chatbot")
    reply = sent["chatbot"][-1]
    assert reply["role"] == "assistant" and "tokens/s" in sent["status"]
    jsonschema.validate(json.loads(reply["content"]), PERSON)

    grammar = {"mode": "grammar", "text": 'root ::= "yes" | "no"'}
    answered = last_with(notebook.on_generate(app, notebook_values("Is the sky green? ", grammar), Ctx("nb")), "text")
    assert answered["text"].removeprefix("Is the sky green? ") in ("yes", "no")


def test_a_broken_schema_is_an_error_line_and_nothing_runs(app: AppState) -> None:
    (only,) = notebook.on_generate(app, notebook_values("kept", BROKEN), Ctx("nb"))
    assert only == {"status": "**Error:** The JSON schema is not valid JSON: Expecting property name enclosed in "
                              "double quotes at line 1, column 35."}  # fmt: skip
    (only,) = chat.on_send(app, chat_values("kept", {"mode": "json_schema", "text": '{"type": "objekt"}'}), Ctx("c"))
    assert only["status"].startswith("**Error:** The JSON schema cannot be enforced") and "message" not in only
    (only,) = chat.on_send(app, chat_values("kept", {"mode": "grammar", "text": "  "}), Ctx("c"))
    assert only["status"] == "**Error:** The grammar is empty: write a GBNF grammar (root ::= ...)."


def test_the_reply_format_is_checked_when_it_changes_and_a_reload_finds_it_again(tmp_path: Path) -> None:
    presets = shutil.copytree(AppConfig().presets_dir, tmp_path / "presets")  # one is saved below, not in the repo's
    state = AppState(config=AppConfig(models_dir=tmp_path, user_data_dir=tmp_path / "data", presets_dir=presets))
    changed = parameters.on_format(state, SCHEMA, Ctx())
    assert changed["saved"] == SCHEMA and changed["status"] == parameters.FORMAT_NOTES["json_schema"]
    assert changed["text"]["visible"] and changed["text"]["language"] == "json"
    broken = parameters.on_format(state, BROKEN, Ctx())
    assert broken["status"].startswith("**Error:** The JSON schema is not valid JSON") and broken["saved"] == BROKEN
    assert not parameters.on_format(state, {"mode": "json_object", "text": ""}, Ctx())["text"]["visible"]

    page = parameters.on_page_load(state, {"saved": SCHEMA}, Ctx())  # what the browser kept
    assert page["reply_format"]["mode"] == "json_schema" and page["reply_format"]["text"]["value"] == SCHEMA["text"]
    odd = parameters.on_page_load(state, {"saved": {"mode": "python", "text": 5}}, Ctx())  # not ours: ignored
    assert odd["reply_format"]["mode"] == "none" and odd["reply_format"]["text"]["value"] == ""
    assert parameters.params_from_values(params(None)).constraint is None
    saved = parameters.on_save(state, {"name": "Mine", "params": params(None) | {"constraint": SCHEMA}}, Ctx())
    assert saved["status"] == "Saved preset **Mine**."  # a preset keeps the samplers, never the reply format
    assert "properties" not in state.presets.path("Mine").read_text()
    assert state.presets.load("Mine").constraint is None


def test_the_model_tabs_switch_lets_the_running_api_load_another_model(tmp_path: Path, smollm2_gguf: Path) -> None:
    first, other = GGUF, f"{GGUF}-b"  # two folders of the same file: two models to switch between
    for name in (first, other):
        link_tree(smollm2_gguf.parent, tmp_path / "models" / name)
    state = AppState(config=AppConfig(models_dir=tmp_path / "models", user_data_dir=tmp_path / "data"))
    state.models.load(first, loader_settings={"n_ctx": 512}, confirm_memory=True)  # no --api-load-models
    assert model_handlers.on_page_load(state, {}, Ctx())["api_loads"] is False
    api = ApiServer(state, host="127.0.0.1", port=free_port()).start()

    def ask(model: str) -> httpx.Response:
        body = {"model": model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
        return httpx.post(f"http://127.0.0.1:{api.port}/v1/completions", json=body, timeout=60)

    try:
        refused = ask(other)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_loaded"

        flipped = model_handlers.on_api_loads(state, {"api_loads": True}, Ctx())
        assert model_handlers.API_LOADS_ON in flipped["status"] and state.model_switch.allow_loads
        assert model_handlers.on_page_load(state, {}, Ctx("another-page"))["api_loads"] is True
        answered = ask(other)
        assert answered.status_code == 200 and answered.json()["model"] == other
        assert state.models.current_info.view.name == other

        flipped = model_handlers.on_api_loads(state, {"api_loads": False}, Ctx())
        assert model_handlers.API_LOADS_OFF in flipped["status"]
        refused = ask(first)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_loaded"
        assert state.models.current_info.view.name == other
    finally:
        api.stop()
        state.models.unload()
