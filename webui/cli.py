"""One-shot generation from the command line (no server): load `--model` with the same settings resolution as the
UI, build the prompt (raw, or under `--chat` with the shared chat prompt builder and the model's template), stream the
reply to stdout and exit.

Errors print one line on stderr and exit 1; the reply goes to stdout alone so scripts can capture it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from loaders.base import GenerationParams
from loaders.errors import CorralError
from webui import chat_turn
from webui.generation import StreamUpdate, Turn, TurnBuilder
from webui.history import Chat
from webui.state import AppState
from webui.templates import Message

if TYPE_CHECKING:
    from webui.model_service import LoadedInfo

PROMPT_START = "----- prompt -----"
PROMPT_END = "----- end of prompt -----"


def run_once(state: AppState, args: argparse.Namespace) -> int:
    try:
        state.models.load(args.model, loader=args.loader, confirm_memory=args.yes, loras=args.loras)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        for update in state.generation.stream("cli", _turn(state, args)):
            if update.stats is not None:
                _print_reply(update)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        state.models.unload()
    return 0


def _print_reply(update: StreamUpdate) -> None:
    print(update.text, flush=True)
    stats = update.stats
    print(f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.1f} tokens/s, {stats.stop_reason}]", file=sys.stderr)


def _turn(state: AppState, args: argparse.Namespace) -> TurnBuilder:
    """The turn for `--prompt`: raw, or (`--chat`) through the shared chat prompt builder with `--template` or the
    model's template; `--show-prompt` prints the exact prompt once it is built."""
    def params(info: LoadedInfo) -> GenerationParams:
        return _params(state, args, info.view.resolved.preset)

    def chat(info: LoadedInfo) -> Chat:
        messages = [Message("user", args.prompt)]
        return chat_turn.model_chat(info, messages, template=args.template, system_prompt=args.system or "")

    chat_build = chat_turn.chat_turn(state.templates, chat, params)

    def build(info: LoadedInfo) -> Turn:
        turn = chat_build(info) if args.chat else Turn(args.prompt, params(info))
        if args.show_prompt:
            print(PROMPT_START, turn.prompt, PROMPT_END, sep="\n", flush=True)
        return turn

    return build


def _params(state: AppState, args: argparse.Namespace, model_preset: str | None) -> GenerationParams:
    if args.greedy:
        params = GenerationParams(do_sample=False)
    else:
        params = state.presets.load(args.preset or model_preset or state.config.default_preset)
    changes = {}
    if args.max_new_tokens is not None:
        changes["max_new_tokens"] = args.max_new_tokens
    if args.seed is not None:
        changes["seed"] = args.seed
    return dataclasses.replace(params, **changes)
