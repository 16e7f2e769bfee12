"""Named inputs and outputs for Gradio handlers, so a handler is a plain function that tests call without a browser.

A handler takes `(state, values, ctx)`: `values` is a dict of the input components' values by name (nested for
groups: `values["params"]["top_k"]`), `ctx` says which browser session calls and reports progress. It returns (or
yields) a dict of what to change, by output name, nested the same way; outputs it leaves out keep their value (no
`gr.skip()` counting, no positional `*values` with offset arithmetic). `listen` binds one to Gradio's events.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

Spec = Mapping[str, Any]  # name -> component, or name -> Spec (a group)
Values = dict[str, Any]
Handler = Callable[..., Values | Iterator[Values]]
_SEP = "\x1f"  # joins group and name in flat keys; names may hold dots ("llama.cpp")


@dataclass
class Ctx:
    """The calling browser session, and a progress reporter (`progress(fraction or None, desc=...)`)."""

    session: str = "default"
    progress: Callable[..., Any] = field(default=lambda *args, **kwargs: None)
    event: dict[str, Any] = field(default_factory=dict)  # data sent by a custom HTML event (`trigger(...)`)


def listen(
    triggers: Any, handler: Handler, state: Any, inputs: Spec | None = None, outputs: Spec | None = None, **kwargs: Any
) -> Any:
    """`gr.on(triggers, ...)` calling `handler(state, values, ctx)` with named inputs and outputs (see the module).
    `triggers`: event listeners (`button.click`, `demo.load`...). Returns the dependency (for `then`)."""
    fn, inputs_list, outputs_list = _bind(handler, state, inputs or {}, outputs or {})
    return gr.on(triggers, fn, inputs=inputs_list, outputs=outputs_list, **kwargs)


def then(
    dependency: Any, handler: Handler, state: Any, inputs: Spec | None = None, outputs: Spec | None = None,
    **kwargs: Any,
) -> Any:
    """As `listen`, run after `dependency` (another event) has finished."""
    fn, inputs_list, outputs_list = _bind(handler, state, inputs or {}, outputs or {})
    return dependency.then(fn, inputs=inputs_list, outputs=outputs_list, **kwargs)


def _bind(handler: Handler, state: Any, inputs: Spec, outputs: Spec) -> tuple[Callable[..., Any], list, list]:
    """The Gradio function for `handler`: Gradio gives it the request, the event data and a progress tracker
    (found by their annotations and default), then the inputs' values in order."""
    in_flat, out_flat = _flatten(inputs), _flatten(outputs)
    names = list(in_flat)

    def call(request: gr.Request | None, progress: Any, data: gr.EventData | None, values: tuple) -> Any:
        event = getattr(data, "_data", None)
        ctx = Ctx(_session(request), progress, event if isinstance(event, dict) else {})
        return handler(state, _nest(dict(zip(names, values, strict=True))), ctx)

    if inspect.isgeneratorfunction(handler):

        def fn(request: gr.Request, data: gr.EventData, progress=gr.Progress(), *values):  # noqa: B008
            for result in call(request, progress, data, values):
                yield _to_components(result, outputs)

    else:

        def fn(request: gr.Request, data: gr.EventData, progress=gr.Progress(), *values):  # noqa: B008
            return _to_components(call(request, progress, data, values), outputs)

    fn.__name__ = handler.__name__  # Gradio names the endpoint after the function: /gradio_api/call/on_load
    return fn, list(in_flat.values()), list(out_flat.values())


def _session(request: gr.Request | None) -> str:
    """A key for per-browser-session state (Stop cancels only this session's generation)."""
    return getattr(request, "session_hash", None) or "default"


def _flatten(spec: Spec, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, item in spec.items():
        if isinstance(item, Mapping):
            flat |= _flatten(item, f"{prefix}{name}{_SEP}")
        else:
            flat[f"{prefix}{name}"] = item
    return flat


def _nest(flat: dict[str, Any]) -> Values:
    nested: Values = {}
    for key, value in flat.items():
        *groups, name = key.split(_SEP)
        place = nested
        for group in groups:
            place = place.setdefault(group, {})
        place[name] = value
    return nested


def _to_components(result: Values | None, spec: Spec) -> dict[Any, Any]:
    """`{name: value}` (nested like `spec`) as `{component: value}`; an unknown name is a bug, said at once."""
    out: dict[Any, Any] = {}
    for name, value in (result or {}).items():
        target = spec[name]
        if isinstance(target, Mapping):
            out |= _to_components(value, target)
        else:
            out[target] = value
    return out
