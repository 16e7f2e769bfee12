"""Small helpers shared by the tabs: who the browser session is, and how results and errors are worded.

Handlers catch Corral's own errors (`CorralError`, whose message says what to do) and show them; anything else is a
bug: `error_text` logs it with its traceback and shows a short line pointing to the log, never a traceback.
"""

from __future__ import annotations

import logging

import gradio as gr

from loaders.errors import CorralError

log = logging.getLogger(__name__)
UI_REFRESH_SECONDS = 0.05  # a streaming reply is pushed to the browser at most 20 times a second


def session_id(request: gr.Request | None) -> str:
    """A key for per-browser-session state (Stop cancels only this session's generation)."""
    return getattr(request, "session_hash", None) or "default"


def stopper(state):
    """A Stop handler that cancels only the calling browser session's generation."""

    def stop(request: gr.Request) -> None:
        state.generation.stop(session_id(request))

    return stop


def error_text(error: Exception, action: str) -> str:
    """What the status line shows for `error` raised while doing `action` (e.g. "generating")."""
    if isinstance(error, CorralError):
        return f"⚠️ {error}"
    log.error("Internal error while %s", action, exc_info=error)
    return f"⚠️ Internal error while {action}; see the server log."
