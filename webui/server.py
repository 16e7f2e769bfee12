"""Launching the web UI: where it binds, whom it answers, who may log in, and loading `--model` before the first page.

Binds to 127.0.0.1 unless `--listen`; listening on other interfaces needs `--gradio-auth` or an explicit
`--insecure-listen` (with a warning), so a model is never exposed to a network by accident. Gradio checks no
`Host` header and only withholds CORS headers from foreign origins (the request itself still runs), so the app
Gradio builds gets `webui/listen.HostGuard` as its own middleware: a request for another host name (DNS
rebinding) or from another web page is refused before any Gradio route or event runs. Server-side rendering stays
off: it would put a Node proxy in front of that check.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from loaders.errors import CorralError
from webui.listen import AllowedHosts, HostGuard, bind_address, hosts_of_args
from webui.state import AppState

log = logging.getLogger(__name__)


def ui_address(args: argparse.Namespace) -> str:
    return bind_address(args, protected=args.gradio_auth is not None, insecure_ok=args.insecure_listen,
                        needs="--gradio-auth USER:PASS, or --insecure-listen if you really want it open")


def guard_kwargs(hosts: AllowedHosts) -> dict[str, Any]:
    """`launch()` options that put the Host / Origin check in front of every Gradio route."""
    from starlette.middleware import Middleware

    return {"app_kwargs": {"middleware": [Middleware(HostGuard, hosts=hosts)]}, "ssr_mode": False}


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
            state.models.load(args.model, loader=args.loader, confirm_memory=args.yes, loras=args.loras)
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
        **guard_kwargs(hosts_of_args(args, host)),
        **launch_kwargs(state),
    )
    return 0
