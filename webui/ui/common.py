"""Small helpers shared by the tabs: who the browser session is, and how results are worded."""

from __future__ import annotations

import gradio as gr

from webui.engine import GenerationStats


def session_id(request: gr.Request | None) -> str:
    """A key for per-browser-session state (Stop cancels only this session's generation)."""
    return getattr(request, "session_hash", None) or "default"


def stopper(state):
    """A Stop handler that cancels only the calling browser session's generation."""

    def stop(request: gr.Request) -> None:
        state.generation.stop(session_id(request))

    return stop


def format_stats(stats: GenerationStats) -> str:
    return (
        f"{stats.new_tokens} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.1f} tokens/s), "
        f"prompt {stats.prompt_tokens} tokens, stopped by {stats.stop_reason.replace('_', ' ')}."
    )
