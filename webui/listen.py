"""Where Corral's servers bind and whom they answer: the bind rule and the Host / Origin guard of the UI and the API.

Binding: loopback by default; `--listen` (on `--listen-host`, default 0.0.0.0) only with the server's own
protection (`--gradio-auth` for the UI, `--api-key` for the API), so a model is never exposed to a network by
accident. The UI may be opened anyway with `--insecure-listen` (with a warning).

Answering: a web page the user visits can make the browser talk to 127.0.0.1, either directly (a cross-site
request: its `Origin` is foreign) or by DNS rebinding (its own name resolving to 127.0.0.1: its `Host` is
foreign). `HostGuard` serves a request only when its `Host` is one of the names the server is reached by
(127.0.0.1, localhost, [::1], the bind address, and the names given with `--allowed-hosts`) on the server's port,
and its `Origin`, when present, is one of those too; anything else is refused before any route runs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
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


# --- whom we answer -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllowedHosts:
    """Host names a request may name; `ports` maps a name to the one port it may come with (None: the server's)."""

    ports: dict[str, int | None]

    def allows(self, authority: str, server_port: int | None) -> bool:
        """Whether `authority` ("name[:port]", IPv6 in brackets) is one of ours on the right port."""
        parsed = _split_authority(authority)
        if parsed is None:
            return False
        name, port = parsed
        if name not in self.ports:
            return False
        wanted = self.ports[name] if self.ports[name] is not None else server_port
        return wanted is None or (port if port is not None else 80) == wanted


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> AllowedHosts:
    """Loopback names, the bind address and `extra` (`--allowed-hosts`: "name" or "name:port")."""
    ports: dict[str, int | None] = {name: None for name in (*LOOPBACK_NAMES, bound.strip("[]").lower())}
    for entry in extra:
        parsed = _split_authority(entry.strip())
        if parsed is None:
            raise SystemExit(f"--allowed-hosts: {entry!r} is not a host name (NAME or NAME:PORT).")
        ports[parsed[0]] = parsed[1]
    return AllowedHosts(ports)


def hosts_of_args(args: argparse.Namespace, bound: str) -> AllowedHosts:
    """The hosts a server bound at `bound` answers for these flags (`--allowed-hosts` only counts with --listen:
    without it, the server is reached on loopback only)."""
    names = [n for n in (getattr(args, "allowed_hosts", None) or "").split(",") if n.strip()]
    if names and not args.listen:
        log.warning("--allowed-hosts is ignored without --listen: Corral is reached on loopback only.")
    return allowed_hosts(bound, names if args.listen else [])


def _split_authority(authority: str) -> tuple[str, int | None] | None:
    """("name", port) of "name", "name:port", "[::1]:port"; None when it is not one."""
    if not authority or any(c in authority for c in "/?#@ \t\\"):
        return None
    try:
        parts = urlsplit(f"//{authority}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (name.lower(), port) if name else None


def _origin_authority(origin: str) -> str | None:
    """The "host[:port]" of an Origin header; None for "null" or anything that is not http(s)://authority."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or parts.path or parts.query or not parts.netloc:
        return None
    if parts.port is None:  # the default port of the scheme, spelled out for `allows`
        return f"{parts.netloc}:{443 if parts.scheme == 'https' else 80}"
    return parts.netloc


Refusal = Callable[[int, str, str], Response]  # (status, message, code) -> the response to send


def plain_refusal(status: int, message: str, code: str) -> Response:
    return JSONResponse({"error": message, "code": code}, status_code=status)


class HostGuard:
    """ASGI middleware: refuses (with `refuse`) a request whose Host or Origin is not one of `hosts`."""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts, refuse: Refusal = plain_refusal) -> None:
        self.app, self.hosts, self.refuse = app, hosts, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("Refused a request to %s: %s", scope.get("path"), problem[1])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.refuse(*problem)(scope, receive, send)

    def problem(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, message, code) when the request is not for us, else None."""
        headers = Headers(scope=scope)
        server = scope.get("server")
        port = server[1] if server else None  # the socket's own port: the one the Host must name
        host = headers.get("host", "")
        if not self.hosts.allows(host, port):
            return 403, (f"This server does not answer for the host {host!r}: it is reached as 127.0.0.1, "
                         "localhost or [::1] (with --listen also as the names given with --allowed-hosts)."), \
                "host_not_allowed"
        origin = headers.get("origin")
        if origin is not None:
            authority = _origin_authority(origin)
            if authority is None or not self.hosts.allows(authority, port):
                return 403, f"Requests from the web page at {origin!r} are not served.", "origin_not_allowed"
        return None
