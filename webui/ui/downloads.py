"""The Model tab's download box and job list: `owner/repo[:branch]` -> file list with sizes and memory estimates
-> Download -> a job in the list, with a live bar (verifying, downloading with speed and ETA), Cancel, Resume and
Remove buttons on its own row, and the reason of a failure. Jobs live in the server (`state.downloads`), so the
list survives a page reload; a timer redraws it while any job runs, and the model list refreshes when one ends.

The file table is always the download plan's own chosen and skipped rows for the GGUF pick in the picker
(picking another quant redraws it from the listing kept in the session), so what it shows is what Download
fetches; the job shows the same pick, and the Model tab loads the file the folder's record remembers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from loaders import hardware
from loaders.errors import CorralError, RepoNameError
from loaders.units import format_bytes
from webui import estimate
from webui.download import DownloadPlan, RepoListing, choose_files, destination, list_files, parse_repo, remembered_gguf
from webui.state import AppState
from webui.ui.common import ERROR
from webui.ui.job_list import JOBS_JS, jobs_html
from webui.ui.model_handlers import status_text
from webui.ui.wiring import Ctx, Values, listen

TICK_SECONDS = 1.0
EXAMPLE_REPO = "TheBloke/CodeLlama-13B-GPTQ:gptq-4bit-32g-actorder_True"


@dataclass
class DownloadsBox:
    repo: gr.Textbox
    ctx: gr.Number
    list_btn: gr.Button
    start: gr.Button
    gguf_file: gr.Radio
    files: gr.Markdown
    estimates: gr.Markdown
    message: gr.Markdown
    jobs: gr.HTML
    listing: gr.State
    seen: gr.State
    timer: gr.Timer


def build_box() -> DownloadsBox:
    with gr.Row():
        repo = gr.Textbox(label="Hugging Face repo", placeholder=EXAMPLE_REPO, scale=4, min_width=240,
                          elem_id="download-repo")  # fmt: skip
        ctx = gr.Number(value=0, precision=0, label="Context for estimates (0 = the one it loads with)", scale=1,
                        min_width=160, elem_id="download-ctx")  # fmt: skip
    with gr.Row():
        list_btn = gr.Button("Get file list", elem_id="download-list", min_width=120)
        start = gr.Button("Download", variant="primary", elem_id="download-start", min_width=120)
    # A list, not a dropdown: every quant's whole file name readable at once, on a phone too.
    gguf_file = gr.Radio(choices=[], label="GGUF file (one quant per download)", visible=False,
                         elem_id="download-gguf-file")  # fmt: skip
    files = gr.Markdown(elem_id="download-files")
    estimates = gr.Markdown(elem_id="download-estimates")
    message = gr.Markdown(elem_id="download-progress")
    jobs = gr.HTML(jobs_html([]), elem_id="download-jobs", js_on_load=JOBS_JS, label="Downloads")
    listing = gr.State(None)  # the last listing, so a new GGUF pick redraws the table without asking the Hub again
    seen = gr.State([])  # ids of the jobs this page has seen finished (a new one refreshes the model list)
    timer = gr.Timer(TICK_SECONDS, active=False)
    return DownloadsBox(repo, ctx, list_btn, start, gguf_file, files, estimates, message, jobs, listing, seen, timer)


# --- handlers --------------------------------------------------------------------------------------------------------


def jobs_values(state: AppState, seen: list[str] | None = None) -> Values:
    """The job list, the timer (running while any job is unfinished) and, when a job has ended since `seen`, the
    refreshed model list and status line."""
    jobs = state.downloads.jobs()
    finished = [job.id for job in jobs if job.finished]
    out: Values = {"jobs": jobs_html(jobs), "timer": gr.Timer(active=len(finished) < len(jobs)), "seen": finished}
    if seen is not None and set(finished) - set(seen):
        out |= {"model_name": gr.update(choices=state.models.names()), "model_status": status_text(state)}
    return out


def on_page_load(state: AppState, values: Values, ctx: Ctx) -> Values:
    return jobs_values(state)


def on_tick(state: AppState, values: Values, ctx: Ctx) -> Values:
    return jobs_values(state, values["seen"])


def on_list(state: AppState, values: Values, ctx: Ctx) -> Values:
    text, context = values["repo"], int(values["ctx"] or 0)
    try:
        listed = list_files(parse_repo(text))
        plan = _plan(state, listed, None)
    except CorralError as error:
        return {"files": f"{ERROR} {error}", "estimates": "", "listing": None,
                "gguf_file": gr.update(choices=[], value=None, visible=False)}  # fmt: skip
    choices = list(plan.gguf_choices)
    pick = gr.update(choices=choices, value=plan.gguf_file if choices else None, visible=bool(choices))
    return {"files": plan_table(plan), "estimates": estimates_table(text, context), "gguf_file": pick,
            "listing": listed}  # fmt: skip


def on_pick(state: AppState, values: Values, ctx: Ctx) -> Values:
    listed: RepoListing | None = values["listing"]
    if listed is None:
        return {}
    try:
        return {"files": plan_table(_plan(state, listed, values["gguf_file"] or None))}
    except CorralError as error:
        return {"files": f"{ERROR} {error}"}


def on_start(state: AppState, values: Values, ctx: Ctx) -> Values:
    try:
        job = state.downloads.start(values["repo"], gguf_file=_pick_for(values))
    except CorralError as error:
        return {"message": f"{ERROR} {error}"}
    message = f"Started the download of {job.ref} into `{job.folder.name}`."
    return {"message": message} | jobs_values(state, values["seen"])


def on_job_action(state: AppState, values: Values, ctx: Ctx) -> Values:
    """A button on a job's row: cancel, resume or remove that job."""
    job_id, action = str(ctx.event.get("job", "")), ctx.event.get("action")
    try:
        if action == "cancel":
            message = f"Cancelling {state.downloads.cancel(job_id).ref}: what was downloaded is kept for resuming."
        elif action == "resume":
            message = f"Resuming the download of {state.downloads.resume(job_id).ref}."
        elif action == "remove":
            state.downloads.dismiss(job_id)
            message = "Removed from the list (the files stay in the models folder)."
        else:
            return {}
    except CorralError as error:
        message = f"{ERROR} {error}"
    return {"message": message} | jobs_values(state, values["seen"])


def _pick_for(values: Values) -> str | None:
    """The picker's GGUF file, if the listing it came from is of the repo now in the box (else the folder's
    remembered pick or the default applies)."""
    listed: RepoListing | None = values["listing"]
    try:
        same = listed is not None and listed.ref == parse_repo(values["repo"])
    except RepoNameError:
        same = False
    return (values["gguf_file"] or None) if same else None


def _plan(state: AppState, listed: RepoListing, file: str | None) -> DownloadPlan:
    """The plan Download would carry out: the picked GGUF, else the one already downloaded into the folder."""
    folder = destination(state.downloads.models_dir, listed.ref)
    return choose_files(listed, gguf_file=file, remembered=remembered_gguf(folder, listed.ref))


def plan_table(plan: DownloadPlan) -> str:
    rows = ["| file | size | |", "|---|---|---|"]
    rows += [f"| {f.path} | {format_bytes(f.size)} | download |" for f in plan.chosen]
    rows += [f"| {s.file.path} | {format_bytes(s.file.size)} | skipped: {s.reason} |" for s in plan.skipped]
    ref = plan.listing.ref
    head = f"**{ref.repo_id}** @ `{ref.branch}`: {format_bytes(plan.total_bytes)} to download"
    return head + (f" ({plan.gguf_reason})" if plan.gguf_reason else "") + "\n\n" + "\n".join(rows)


def estimates_table(text: str, ctx: int) -> str:
    """Per file or branch: RAM at load and at the full context (the one it loads with, or `ctx`), VRAM, verdict."""
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
        "| file / branch | context | RAM at load | RAM at full context | VRAM | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        est = r.estimate
        cells = [str(est.ctx), format_bytes(est.ram_at_load)] if est else ["?", "?"]
        lines.append(f"| {r.name} | {' | '.join(cells)} | {format_bytes(r.ram)} | {format_bytes(r.vram)} | "
                     f"{r.verdict} {r.error} |")
    return "\n".join(lines)


def wire(state: AppState, demo: gr.Blocks, box: DownloadsBox, *, model_name: Any, model_status: Any) -> None:
    b = box
    jobs = {"jobs": b.jobs, "timer": b.timer, "seen": b.seen, "model_name": model_name, "model_status": model_status}
    hidden = {"show_progress": "hidden"}
    listen(demo.load, on_page_load, state, None, jobs, **hidden)
    listen(b.timer.tick, on_tick, state, {"seen": b.seen}, jobs, **hidden)
    listed = {"files": b.files, "estimates": b.estimates, "gguf_file": b.gguf_file, "listing": b.listing}
    listen(b.list_btn.click, on_list, state, {"repo": b.repo, "ctx": b.ctx}, listed)
    listen(b.gguf_file.change, on_pick, state, {"listing": b.listing, "gguf_file": b.gguf_file}, {"files": b.files})
    start_in = {"repo": b.repo, "gguf_file": b.gguf_file, "listing": b.listing, "seen": b.seen}
    listen(b.start.click, on_start, state, start_in, jobs | {"message": b.message})
    listen(b.jobs.click, on_job_action, state, {"seen": b.seen}, jobs | {"message": b.message}, **hidden)
