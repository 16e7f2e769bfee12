"""The one-shot CLI on a fake model: `--chat` goes through the shared chat prompt builder with the model's template,
`--show-prompt` prints the exact prompt, errors are one line on stderr, and the model is unloaded in every case."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.test_chat_turn import FakeModel, FakeTokenizer, info, own_template
from webui.cli import PROMPT_END, PROMPT_START, run_once
from webui.state import AppConfig, AppState


class FakeModels:
    """The model service's loading, for one fake model."""

    def __init__(self, model: FakeModel) -> None:
        self.model, self.current_info, self.unloads = model, None, 0

    def load(self, name: str, **_options: object):
        self.current_info = info(self.model, name)
        return self.current_info

    def unload(self) -> None:
        self.current_info, self.unloads = None, self.unloads + 1


def cli_args(**changes: object) -> argparse.Namespace:
    values = {"model": "fake", "loader": None, "yes": True, "prompt": "hi", "chat": False, "system": None,
              "template": None, "max_new_tokens": 16, "greedy": True, "preset": None, "seed": None,
              "show_prompt": False, "loras": None, "infill": False}
    return argparse.Namespace(**(values | changes))


@pytest.fixture()
def state(tmp_path: Path) -> AppState:
    state = AppState(config=AppConfig(models_dir=tmp_path / "models", user_data_dir=tmp_path / "data"))
    model = FakeModel("fake", FakeTokenizer("<f>", own_template("F-TEMPLATE")), "Hello there")
    state.__dict__["models"] = FakeModels(model)  # the cached_property's slot
    return state


def test_chat_uses_the_models_template_and_shows_the_prompt(state: AppState, capsys) -> None:
    assert run_once(state, cli_args(chat=True, system="Be brief.", show_prompt=True)) == 0
    out, err = capsys.readouterr()
    prompt = "<f>F-TEMPLATE[system:Be brief.][user:hi][assistant:"
    assert out == f"{PROMPT_START}\n{prompt}\n{PROMPT_END}\nHello there\n"
    assert "tokens/s" in err and state.models.unloads == 1
    assert state.models.model.tokenizer.encoded == [prompt]


def test_raw_prompt_is_sent_as_written(state: AppState, capsys) -> None:
    assert run_once(state, cli_args(prompt="Once upon")) == 0
    assert capsys.readouterr().out == "Hello there\n"
    assert state.models.model.tokenizer.encoded == ["Once upon"]


def test_unknown_template_is_one_line_and_unloads(state: AppState, capsys) -> None:
    assert run_once(state, cli_args(chat=True, template="no-such-template")) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: Unknown prompt template 'no-such-template'") and err.count("\n") == 1
    assert state.models.unloads == 1
