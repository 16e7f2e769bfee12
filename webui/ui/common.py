"""Small helpers shared by the tabs: how results, errors and warnings are worded, and the one refresh pace.

Handlers catch Corral's own errors (`CorralError`, whose message says what to do) and show them; anything else is a
bug: `error_text` logs it with its traceback and shows a short line pointing to the log, never a traceback.
Status lines mark problems with words ("Error:", "Warning:"), never emoji: they must read the same on a machine
without an emoji font.
"""

from __future__ import annotations

import logging

from loaders.errors import CorralError

log = logging.getLogger(__name__)
UI_REFRESH_SECONDS = 0.05  # a streaming reply is pushed to the browser at most 20 times a second
ERROR = "**Error:**"
WARNING = "**Warning:**"


def error_text(error: BaseException, action: str) -> str:
    """What the status line shows for `error` raised while doing `action` (e.g. "generating")."""
    if isinstance(error, CorralError):
        return f"{ERROR} {error}"
    log.error("Internal error while %s", action, exc_info=error)
    return f"{ERROR} Internal error while {action}; see the server log."


def warning_lines(warnings: list[str] | tuple[str, ...]) -> str:
    return "\n\n".join(f"{WARNING} {w}" for w in warnings)
