"""The Model tab's download job list, as HTML: one row per job with its repo and branch, the GGUF file it fetches,
its state, a live bar, bytes, speed and ETA, the reason of a failure, its files (until it is done), and the row's
own buttons (Cancel a running job, Resume a cancelled or failed one, Remove a finished one from the list).

The buttons carry `data-job` / `data-action`; `JOBS_JS` (the component's `js_on_load`) sends a click on one to
the server as a custom event with those two fields. Every piece of text is escaped.
"""

from __future__ import annotations

from html import escape

from loaders.units import format_bytes
from webui.download import DownloadJob, DownloadProgress

STATE_LABEL = {
    "queued": "Queued",
    "verifying": "Verifying",
    "running": "Downloading",
    "done": "Done",
    "cancelled": "Cancelled",
    "failed": "Failed",
}
ACTIONS = {
    "queued": ("cancel",),
    "verifying": ("cancel",),
    "running": ("cancel",),
    "cancelled": ("resume", "remove"),
    "failed": ("resume", "remove"),
    "done": ("remove",),
}
JOBS_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-job]');
  if (button) trigger('click', {job: button.dataset.job, action: button.dataset.action});
});
"""
EMPTY = '<div class="corral-jobs jobs-empty">No downloads yet: give a repo above and click Download.</div>'


def jobs_html(jobs: list[DownloadJob]) -> str:
    if not jobs:
        return EMPTY
    return '<div class="corral-jobs">' + "".join(_row(job.id, job.snapshot(), job.gguf_pick) for job in jobs) + "</div>"


def _row(job_id: str, snap: DownloadProgress, gguf: str | None) -> str:
    state = snap.state
    buttons = "".join(
        f'<button class="job-btn {a}" data-job="{escape(job_id)}" data-action="{a}">{a.capitalize()}</button>'
        for a in ACTIONS.get(state, ())
    )
    pick = f'<span class="job-gguf">GGUF: {escape(gguf)}</span>' if gguf else ""
    return (
        f'<div class="job" data-job="{escape(job_id)}" data-ref="{escape(snap.ref)}" data-state="{state}">'
        f'<div class="job-head"><b>{escape(snap.ref)}</b> <span class="job-state {state}">'
        f"{STATE_LABEL.get(state, escape(state))}</span>{pick}"
        f'<span class="job-actions">{buttons}</span></div>'
        f'<div class="job-bar {state}"><div style="width:{100 * snap.fraction:.1f}%"></div></div>'
        f'<div class="job-line">{_numbers(snap)}</div>'
        + (f'<div class="job-msg">{escape(snap.message)}</div>' if snap.message else "")
        + "".join(f'<div class="job-error">{escape(e)}</div>' for e in snap.errors)
        + _files(snap)
        + "</div>"
    )


def _numbers(snap: DownloadProgress) -> str:
    text = f"{format_bytes(snap.done_bytes)} / {format_bytes(snap.total_bytes)} ({snap.fraction:.0%})"
    if snap.speed_bps:
        text += f" · {format_bytes(snap.speed_bps)}/s"
    if snap.eta_s is not None and snap.state == "running":
        text += f" · ETA {_duration(snap.eta_s)}"
    return text


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _files(snap: DownloadProgress) -> str:
    """One line per file while the job is not done (a list redrawn every second cannot keep a fold open)."""
    if not snap.files or snap.state == "done":
        return ""
    items = "".join(
        f"<li>{escape(f.name)}: {format_bytes(f.done)} / {format_bytes(f.total)}, {escape(f.state)}"
        + (f" ({escape(f.error)})" if f.error else "")
        + "</li>"
        for f in snap.files
    )
    return f'<ul class="job-files">{items}</ul>'
