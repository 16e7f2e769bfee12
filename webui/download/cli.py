"""`python -m webui.download`: list what a download would fetch, download with progress on stderr, or check a
downloaded folder offline. Exit codes: 0 done/OK, 1 error or damaged files, 130 cancelled (Ctrl-C)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from loaders.errors import CorralError
from loaders.units import format_bytes
from webui.download.choose import DownloadPlan
from webui.download.hub import REPO_FORM, RepoRef, parse_repo
from webui.download.jobs import DownloadManager, plan_download
from webui.download.progress import DownloadProgress
from webui.download.record import destination
from webui.download.transfer import DEFAULT_STALL_S, DEFAULT_THREADS
from webui.download.verify import CheckReport, check


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webui.download", description="Download a model from the Hub.")
    parser.add_argument("repo", help=f"model to download: {REPO_FORM}")
    parser.add_argument("--file", help="the GGUF file to download from a repo with several")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="models folder (default: models)")
    parser.add_argument("--list", action="store_true", help="print the chosen and skipped files, download nothing")
    parser.add_argument("--check", action="store_true", help="verify the downloaded folder, download nothing")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="files downloaded at once")
    parser.add_argument(
        "--stall-timeout", type=float, default=DEFAULT_STALL_S, metavar="SECONDS",
        help=f"seconds without a byte before a transfer is resumed (default {DEFAULT_STALL_S:g})",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        ref = parse_repo(args.repo)
        folder = destination(args.models_dir, ref)
        if args.check:
            return _print_check(check(folder))
        if args.list:
            return _print_plan(plan_download(ref, folder, gguf_file=args.file), folder)
        return _download(ref, args)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _print_plan(plan: DownloadPlan, folder: Path) -> int:
    print(f"{plan.listing.ref} @ {plan.listing.commit[:12]} -> {folder}")
    for item in plan.chosen:
        print(f"  get   {format_bytes(item.size):>10}  {item.path}")
    for skip in plan.skipped:
        print(f"  skip  {format_bytes(skip.file.size):>10}  {skip.file.path}  ({skip.reason})")
    if len(plan.gguf_choices) > 1:
        print(f"GGUF files (choose with --file): {', '.join(plan.gguf_choices)}")
    print(f"total {format_bytes(plan.total_bytes)} in {len(plan.chosen)} files")
    return 0


def _print_check(report: CheckReport) -> int:
    print(f"{report.folder} ({report.source} @ {report.commit[:12]})")
    for item in report.files:
        print(f"  {item.status:7} {item.name}  {item.detail}")
    print("all files OK" if report.ok else "some files are missing or damaged: download again to repair")
    return 0 if report.ok else 1


def _download(ref: RepoRef, args: argparse.Namespace) -> int:
    manager = DownloadManager(args.models_dir, threads=args.threads, stall_s=args.stall_timeout)
    job = manager.start(ref, gguf_file=args.file, token=os.environ.get("HF_TOKEN"))
    reported: set[str] = set()
    try:
        while not job.finished:
            _print_progress(job.wait(0.5), reported)
    except KeyboardInterrupt:
        job.cancel()
        job.wait()
    final = job.snapshot()
    _print_progress(final, reported)
    if final.state == "done":
        print(final.message)
        return 0
    print(f"error: {final.message}", file=sys.stderr)
    return 130 if final.state == "cancelled" else 1


def _print_progress(snap: DownloadProgress, reported: set[str]) -> None:
    """On stderr: one line per finished file, and the running totals (rewritten in place on a terminal)."""
    tty = sys.stderr.isatty()
    for item in snap.files:
        if item.state in ("done", "present", "failed") and item.name not in reported:
            reported.add(item.name)
            status = {"done": "got", "present": "had"}.get(item.state, "FAILED")
            print(f"{chr(13) if tty else ''}  {status:6} {format_bytes(item.total):>10}  {item.name}", file=sys.stderr)
    if snap.state != "running" or not snap.total_bytes:
        return
    eta = f"ETA {snap.eta_s:.0f}s" if snap.eta_s is not None else "ETA ?"
    finished = sum(f.state in ("done", "present") for f in snap.files)
    line = (
        f"{snap.fraction:6.1%}  {format_bytes(snap.done_bytes)} / {format_bytes(snap.total_bytes)}  "
        f"{format_bytes(snap.speed_bps)}/s  {eta}  ({finished}/{len(snap.files)} files)"
    )
    print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr)
