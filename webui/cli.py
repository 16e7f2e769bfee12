"""One-shot generation from the command line (no server): load `--model` with the same settings resolution as the
UI, build the prompt (raw, or with the chat template under `--chat`), stream the reply to stdout and exit.

Errors print one line on stderr and exit 1; the reply goes to stdout alone so scripts can capture it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from loaders.base import GenerationParams
from loaders.errors import CorralError
from webui.history import Chat
from webui.state import AppState
from webui.templates import AUTO_TEMPLATE, Message

PROMPT_START = "----- prompt -----"
PROMPT_END = "----- end of prompt -----"


def run_once(state: AppState, args: argparse.Namespace) -> int:
    try:
        info = state.models.load(args.model, loader=args.loader, confirm_memory=args.yes)
        params = _params(state, args, info.view.resolved.preset)
        prompt, stops = _prompt(state, args, info.view.resolved.template)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.show_prompt:
        print(PROMPT_START, prompt, PROMPT_END, sep="\n", flush=True)
    params = dataclasses.replace(params, stop=tuple(dict.fromkeys((*params.stop, *stops))))
    try:
        for update in state.generation.stream("cli", prompt, params):
            if update.stats is None:
                continue
            print(update.text, flush=True)
            stats = update.stats
            print(
                f"[{stats.new_tokens} tokens, {stats.tokens_per_second:.1f} tokens/s, {stats.stop_reason}]",
                file=sys.stderr,
            )
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        state.models.unload()
    return 0


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


def _prompt(state: AppState, args: argparse.Namespace, model_template: str | None) -> tuple[str, tuple[str, ...]]:
    if not args.chat:
        return args.prompt, ()
    from webui import chat_service

    template = args.template or model_template or AUTO_TEMPLATE
    if template != AUTO_TEMPLATE:
        state.templates.get(template)  # an unknown name fails here with the list of known ones
    chat = Chat(
        id="cli",
        mode="instruct",
        template=template,
        system_prompt=args.system or "",
        messages=[Message("user", args.prompt)],
    )
    return chat_service.prompt_for(state, chat)
