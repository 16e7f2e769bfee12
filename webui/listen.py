"""Where Corral's servers bind: 127.0.0.1, unless `--listen` and the server is protected on the network.

The one rule for the web UI and the API: loopback by default; `--listen` (on `--listen-host`, default 0.0.0.0)
only with the server's own protection (`--gradio-auth` for the UI, `--api-key` for the API), so a model is never
exposed to a network by accident. The UI may be opened anyway with `--insecure-listen` (with a warning).
"""

from __future__ import annotations

import argparse
import logging

LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)


def bind_address(args: argparse.Namespace, *, protected: bool, needs: str, insecure_ok: bool = False) -> str:
    """The address to bind. `protected`: the server's login is set; `needs`: the flag to name when it is not."""
    if not args.listen:
        return LOOPBACK
    if not protected and not insecure_ok:
        raise SystemExit(f"--listen exposes Corral to your network: add {needs}.")
    if not protected:
        log.warning("Listening on all interfaces WITHOUT a login (--insecure-listen).")
    return args.listen_host or "0.0.0.0"
