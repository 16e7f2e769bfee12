"""The Prompt view of the Chat and Notebook tabs, as HTML: the exact text of the last request, its token count
against the window it must fit, and its tokens (id and piece each; BOS, EOS and other special tokens marked).

Pure functions of a `PromptRecord` (`webui/prompt_record.py`); every piece of text is escaped.
"""

from __future__ import annotations

from html import escape

from webui.prompt_record import PromptRecord, TokenView

EMPTY = '<div class="corral-prompt pv-empty">The exact prompt of the next request will be shown here.</div>'
KIND_LABEL = {"bos": "BOS", "eos": "EOS", "special": "special"}


def prompt_html(record: PromptRecord | None) -> str:
    if record is None:
        return EMPTY
    parts = [f'<div class="corral-prompt">{_head(record)}']
    parts.append(f'<div class="pv-label">Text ({len(record.text):,} characters)</div>')
    parts.append(f'<pre class="pv-text">{escape(record.text)}</pre>')
    if record.tokens:
        parts.append(_tokens(record))
    if record.note:
        parts.append(f'<div class="pv-note">{escape(record.note)}</div>')
    return "".join(parts) + "</div>"


def _head(record: PromptRecord) -> str:
    where = f"model {escape(record.model)}" + (f", template {escape(record.template)}" if record.template else "")
    if record.n_tokens is None:
        return f'<div class="pv-head">{where}</div>'
    budget = record.window - record.max_new_tokens
    share = min(100.0, 100.0 * record.n_tokens / budget) if budget > 0 else 100.0
    context = f"context {record.context_length:,}, " if record.context_length else ""
    cut = (f' <span class="pv-cut">{record.cut_tokens:,} tokens were cut from the start to fit.</span>'
           if record.cut_tokens else "")  # fmt: skip
    return (
        f'<div class="pv-head"><b>{record.n_tokens:,} tokens</b> of the {budget:,} the prompt may use '
        f"({context}truncation_length {record.truncation_length:,}, minus max_new_tokens "
        f"{record.max_new_tokens:,} for the reply); {where}.{cut}</div>"
        f'<div class="pv-bar"><div style="width:{share:.1f}%"></div></div>'
    )


def _tokens(record: PromptRecord) -> str:
    chips: list[str] = []
    previous = -1
    for token in record.tokens:
        if token.index != previous + 1:
            chips.append(f'<span class="pv-gap">{token.index - previous - 1:,} tokens not shown</span>')
        chips.append(_chip(token))
        previous = token.index
    marks = " ".join(f'<span class="tok {k}">{v}</span>' for k, v in KIND_LABEL.items())
    return (
        f'<details class="pv-tokens" open><summary>Tokens: piece above, id below ({marks})</summary>'
        f'<div class="pv-chips">{"".join(chips)}</div></details>'
    )


def _chip(token: TokenView) -> str:
    shown = escape(token.piece).replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u00b7") or "&nbsp;"
    label = f"#{token.index}, id {token.id}" + (f", {KIND_LABEL[token.kind]}" if token.kind else "")
    return (f'<span class="tok {token.kind}" title="{escape(label)}"><span class="p">{shown}</span>'
            f'<span class="i">{token.id}</span></span>')  # fmt: skip
