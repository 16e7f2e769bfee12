"""The Model tab's download box: `owner/repo[:branch]` → file list with sizes and memory estimates → Download with
live progress (per file and total, speed, ETA) → Cancel. Downloads run in the background; the tab polls a progress
snapshot with a timer, and the model list refreshes when a download finishes.

The file table is always the download plan's own chosen and skipped rows for the GGUF pick in the dropdown (picking
another quant redraws it from the listing kept in the session), so what it shows is what Download fetches.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from loaders import hardware
from loaders.errors import CorralError
from loaders.units import format_bytes
from webui import estimate
from webui.download import (
    DownloadJob,
    DownloadPlan,
    DownloadProgress,
    RepoListing,
    choose_files,
    destination,
    list_files,
    parse_repo,
    remembered_gguf,
)
from webui.state import AppState

MARK = {"fits": "✅ fits", "tight": "🟡 tight", "won't fit": "❌ won't fit", "unknown": "?"}


def build(
    state: AppState, *, on_models_changed: gr.Dropdown, status: gr.Markdown, status_text: Callable[[], str]
) -> None:
    """The download box; when a download ends, `on_models_changed` gets the new model list and `status` is redrawn
    with `status_text()` (an empty models folder's "download one" hint goes away)."""
    with gr.Row():
        repo = gr.Textbox(
            label="Hugging Face repo",
            placeholder="TheBloke/CodeLlama-13B-GPTQ:gptq-4bit-32g-actorder_True",
            scale=4,
            elem_id="download-repo",
        )
        ctx = gr.Number(value=0, precision=0, label="Context for estimates (0 = the one it loads with)", scale=1,
                        elem_id="download-ctx")
    with gr.Row():
        list_btn = gr.Button("Get file list", elem_id="download-list")
        gguf_file = gr.Dropdown(
            choices=[], label="GGUF file (one per download)", allow_custom_value=True, visible=False,
            elem_id="download-gguf-file",
        )  # fmt: skip
        start = gr.Button("Download", variant="primary", elem_id="download-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="download-cancel")
    files = gr.Markdown(elem_id="download-files")
    estimates = gr.Markdown(elem_id="download-estimates")
    progress = gr.Markdown(elem_id="download-progress")
    listing = gr.State(None)  # the last listing, so a new GGUF pick redraws the table without asking the Hub again
    job_key = gr.State(None)  # the folder of this session's current job
    timer = gr.Timer(1.0, active=False)

    def on_list(text: str, context: float):
        try:
            listed = list_files(parse_repo(text))
            plan = _plan(state, listed, None)
        except CorralError as error:
            return f"⚠️ {error}", "", gr.update(choices=[], value=None, visible=False), None
        choices = list(plan.gguf_choices)
        pick = gr.update(choices=choices, value=plan.gguf_file if choices else None, visible=bool(choices))
        return _plan_table(plan), _estimates(text, int(context or 0)), pick, listed

    def on_pick(listed: RepoListing | None, file: str | None):
        if listed is None:
            return gr.skip()
        try:
            return _plan_table(_plan(state, listed, file or None))
        except CorralError as error:
            return f"⚠️ {error}"

    def on_start(text: str, file: str | None):
        try:
            job = state.downloads.start(text, gguf_file=file or None)
        except CorralError as error:
            return None, f"⚠️ {error}", gr.Timer(active=False)
        return str(job.folder), "Starting…", gr.Timer(active=True)

    def on_tick(key: str | None):
        job = _job(state, key)
        if job is None:
            return gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
        snap = job.snapshot()
        if not job.finished:
            return _progress_text(snap), gr.skip(), gr.skip(), gr.skip()
        return _progress_text(snap), gr.Timer(active=False), gr.update(choices=state.models.names()), status_text()

    def on_cancel(key: str | None):
        job = _job(state, key)
        if job is not None:
            job.cancel()
        return "Cancelling… (what was downloaded is kept for resuming)"

    list_btn.click(on_list, [repo, ctx], [files, estimates, gguf_file, listing])
    gguf_file.change(on_pick, [listing, gguf_file], files)
    start.click(on_start, [repo, gguf_file], [job_key, progress, timer])
    timer.tick(on_tick, job_key, [progress, timer, on_models_changed, status])
    cancel.click(on_cancel, job_key, progress)


def _plan(state: AppState, listed: RepoListing, file: str | None) -> DownloadPlan:
    """The plan Download would carry out: the picked GGUF, else the one already downloaded into the folder."""
    folder = destination(state.downloads.models_dir, listed.ref)
    return choose_files(listed, gguf_file=file, remembered=remembered_gguf(folder, listed.ref))


def _job(state: AppState, key: str | None) -> DownloadJob | None:
    return next((j for j in state.downloads.jobs() if str(j.folder) == key), None) if key else None


def _plan_table(plan: DownloadPlan) -> str:
    rows = ["| file | size | |", "|---|---|---|"]
    rows += [f"| {f.path} | {format_bytes(f.size)} | download |" for f in plan.chosen]
    rows += [f"| {s.file.path} | {format_bytes(s.file.size)} | skipped: {s.reason} |" for s in plan.skipped]
    ref = plan.listing.ref
    head = f"**{ref.repo_id}** @ `{ref.branch}` — {format_bytes(plan.total_bytes)} to download"
    return head + (f" ({plan.gguf_reason})" if plan.gguf_reason else "") + "\n\n" + "\n".join(rows)


def _estimates(text: str, ctx: int) -> str:
    """Per file or branch: RAM at load and at the full context (the one it loads with, or `ctx`), VRAM, the mark."""
    hw = hardware.snapshot()
    try:
        rows = estimate.per_file(text, ctx=ctx or None, hw=hw)
    except CorralError as error:
        return f"Memory estimate unavailable: {error}"
    where = f"context {ctx}" if ctx else "the context each loads with"
    lines = [
        f"**Memory at {where}** (this machine: {format_bytes(hw.ram_available)} RAM free"
        + "".join(f", GPU {g.index} {format_bytes(g.free)} free" for g in hw.gpus)
        + ")",
        "",
        "| file / branch | context | RAM at load | RAM at full context | VRAM | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        est = r.estimate
        cells = [str(est.ctx), format_bytes(est.ram_at_load)] if est else ["?", "?"]
        lines.append(f"| {r.name} | {' | '.join(cells)} | {format_bytes(r.ram)} | {format_bytes(r.vram)} | "
                     f"{MARK.get(r.verdict, r.verdict)} {r.error} |")
    return "\n".join(lines)


def _progress_text(snap: DownloadProgress) -> str:
    head = {
        "done": "✅ Done",
        "failed": "⚠️ Failed",
        "cancelled": "Cancelled",
        "running": "Downloading",
        "queued": "Queued",
    }.get(snap.state, snap.state)
    total = f"{format_bytes(snap.done_bytes)} / {format_bytes(snap.total_bytes)} ({snap.fraction:.0%})"
    speed = f", {format_bytes(snap.speed_bps)}/s" if snap.speed_bps else ""
    eta = f", ETA {snap.eta_s:.0f} s" if snap.eta_s and snap.state == "running" else ""
    lines = [f"**{head}** — {total}{speed}{eta}. {snap.message or ''}"]
    lines += [
        f"- {f.name}: {format_bytes(f.done)} / {format_bytes(f.total)} — {f.state}"
        + (f" ({f.error})" if f.error else "")
        for f in snap.files
    ]
    lines += [f"- ⚠️ {e}" for e in snap.errors]
    return "\n".join(lines)
