"""One-shot generation from the command line (no server): load `--model` with the same settings resolution as the
UI (and `--lora` adapters), build the prompt (raw; under `--chat` with the shared chat prompt builder and the model's
template; under `--infill` the fill-in-the-middle prompt of `webui/infill.py`, the reply being the middle), stream
the reply to stdout and exit.

Errors print one line on stderr and exit 1; the reply goes to stdout alone so scripts can capture it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from loaders.base import GenerationParams
from loaders.errors import CorralError
from webui import chat_turn, infill
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
        turn = _turn(state, args)  # a malformed --infill prompt is refused before the model loads
        state.models.load(args.model, loader=args.loader, confirm_memory=args.yes, loras=args.loras)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        for update in state.generation.stream("cli", turn):
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
    fill_build = _infill_turn(args, params) if args.infill else None

    def build(info: LoadedInfo) -> Turn:
        if fill_build is not None:
            turn = fill_build(info)
        else:
            turn = chat_build(info) if args.chat else Turn(args.prompt, params(info))
        if args.show_prompt:
            print(PROMPT_START, turn.prompt, PROMPT_END, sep="\n", flush=True)
        return turn

    return build


def _infill_turn(args: argparse.Namespace, params: Callable[[LoadedInfo], GenerationParams]) -> TurnBuilder:
    """`--infill`: the prompt holds <FILL_ME>; the reply printed is the middle alone."""
    if args.chat:
        raise CorralError("--infill fills a gap in code; it cannot be combined with --chat.")
    prefix, suffix = infill.fill_parts(args.prompt)
    return infill.infill_turn(prefix, suffix, params)


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
