"""The Model tab's download box: `owner/repo[:branch]` → file list with sizes and memory estimates → Download with
live progress (per file and total, speed, ETA) → Cancel. Downloads run in the background; the tab polls a progress
snapshot with a timer, and the model list refreshes when a download finishes."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from loaders import hardware
from loaders.errors import CorralError
from webui import estimate
from webui.download import DownloadJob, DownloadProgress, choose_files, list_files, parse_repo
from webui.state import AppState

MB = 1024**2
GB = 1024**3
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
        ctx = gr.Number(value=4096, precision=0, label="Context for estimates", scale=1)
    with gr.Row():
        list_btn = gr.Button("Get file list", elem_id="download-list")
        gguf_file = gr.Dropdown(
            choices=[], label="GGUF file (one per download)", allow_custom_value=True, visible=False,
            elem_id="download-gguf-file",
        )  # fmt: skip
        start = gr.Button("Download", variant="primary", elem_id="download-start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="download-cancel")
    files = gr.Markdown(elem_id="download-files")
    progress = gr.Markdown(elem_id="download-progress")
    job_key = gr.State(None)  # the folder of this session's current job
    timer = gr.Timer(1.0, active=False)

    def on_list(text: str, context: float):
        try:
            ref = parse_repo(text)
            plan = choose_files(list_files(ref))
        except CorralError as error:
            return f"⚠️ {error}", gr.update(choices=[], value=None, visible=False)
        table = _plan_table(plan)
        table += "\n\n" + _estimates(text, int(context or 4096), plan.gguf_choices)
        choices = list(plan.gguf_choices)
        return table, gr.update(choices=choices, value=plan.gguf_file if choices else None, visible=bool(choices))

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

    list_btn.click(on_list, [repo, ctx], [files, gguf_file])
    start.click(on_start, [repo, gguf_file], [job_key, progress, timer])
    timer.tick(on_tick, job_key, [progress, timer, on_models_changed, status])
    cancel.click(on_cancel, job_key, progress)


def _job(state: AppState, key: str | None) -> DownloadJob | None:
    return next((j for j in state.downloads.jobs() if str(j.folder) == key), None) if key else None


def _plan_table(plan) -> str:
    rows = ["| file | size | |", "|---|---|---|"]
    rows += [f"| {f.path} | {_size(f.size)} | download |" for f in plan.chosen]
    rows += [f"| {s.file.path} | {_size(s.file.size)} | skipped: {s.reason} |" for s in plan.skipped]
    return (
        f"**{plan.listing.ref.repo_id}** @ `{plan.listing.ref.branch}` — {plan.total_bytes / GB:.2f} GB to download\n\n"
        + "\n".join(rows)
    )


def _size(n: int) -> str:
    """Bytes as the model cards write them: 13.5 MB, 7.26 GB, 712 KB."""
    if n >= GB:
        return f"{n / GB:,.2f} GB"
    if n >= MB:
        return f"{n / MB:,.1f} MB"
    return f"{n / 1024:,.0f} KB" if n >= 1024 else f"{n} B"


def _estimates(text: str, ctx: int, gguf_choices) -> str:
    hw = hardware.snapshot()
    try:
        rows = estimate.per_file(text, ctx=ctx, hw=hw)
    except CorralError as error:
        return f"Memory estimate unavailable: {error}"
    lines = [
        f"**Memory at context {ctx}** (this machine: {hw.ram_available / GB:.1f} GB RAM free"
        + "".join(f", GPU {g.index} {g.free / GB:.1f} GB free" for g in hw.gpus)
        + ")",
        "",
        "| file / branch | RAM | VRAM | |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.ram / GB:.2f} GB | {r.vram / GB:.2f} GB | {MARK.get(r.verdict, r.verdict)} {r.error} |"
        for r in rows
    ]
    return "\n".join(lines)


def _progress_text(snap: DownloadProgress) -> str:
    head = {
        "done": "✅ Done",
        "failed": "⚠️ Failed",
        "cancelled": "Cancelled",
        "running": "Downloading",
        "queued": "Queued",
    }.get(snap.state, snap.state)
    total = f"{_size(snap.done_bytes)} / {_size(snap.total_bytes)} ({snap.fraction:.0%})"
    speed = f", {snap.speed_bps / MB:.1f} MB/s" if snap.speed_bps else ""
    eta = f", ETA {snap.eta_s:.0f} s" if snap.eta_s and snap.state == "running" else ""
    lines = [f"**{head}** — {total}{speed}{eta}. {snap.message or ''}"]
    lines += [
        f"- {f.name}: {_size(f.done)} / {_size(f.total)} — {f.state}" + (f" ({f.error})" if f.error else "")
        for f in snap.files
    ]
    lines += [f"- ⚠️ {e}" for e in snap.errors]
    return "\n".join(lines)
