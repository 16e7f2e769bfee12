"""Launching the web UI: where it binds, who may log in, and loading `--model` before the first page.

Binds to 127.0.0.1 unless `--listen`; listening on other interfaces needs `--gradio-auth` or an explicit
`--insecure-listen` (with a warning), so a model is never exposed to a network by accident.
"""

from __future__ import annotations

import argparse
import logging

from loaders.errors import CorralError
from webui.listen import bind_address
from webui.state import AppState

log = logging.getLogger(__name__)


def ui_address(args: argparse.Namespace) -> str:
    return bind_address(args, protected=args.gradio_auth is not None, insecure_ok=args.insecure_listen,
                        needs="--gradio-auth USER:PASS, or --insecure-listen if you really want it open")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--gradio-auth takes USER:PASS")
    return user, password


def launch(state: AppState, args: argparse.Namespace) -> int:
    from webui.ui.app import build_ui, launch_kwargs

    host = ui_address(args)
    auth = parse_auth(args.gradio_auth)
    if args.model:
        try:
            state.models.load(args.model, loader=args.loader, confirm_memory=args.yes)
        except CorralError as error:
            log.error("Could not load %s: %s", args.model, error)
    demo = build_ui(state)
    print(f"Corral is running at http://{'127.0.0.1' if host == '127.0.0.1' else host}:{args.port}", flush=True)
    demo.queue(default_concurrency_limit=8).launch(
        server_name=host,
        server_port=args.port,
        auth=auth,
        inbrowser=False,
        show_error=False,
        quiet=True,
        **launch_kwargs(state),
    )
    return 0
