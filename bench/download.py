"""Download throughput: Corral's downloader against a plain single-stream `hf_hub_download` loop, in one run.

Serves a ~1 GB repo (8 random 128 MB `.safetensors` files, built once under ~/.cache/corral/bench) from
tests/hubserver.py on 127.0.0.1 and downloads it both ways into a temporary folder. Both include writing to disk;
ours also hashes every file (sha256) while it streams. Run: `.venv/bin/python -m bench.download [--threads N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from huggingface_hub import hf_hub_download

from tests.hubserver import HubServer
from webui import download

REPO = "corral-bench/random-1GB"
FILES = 8
FILE_SIZE = 128 * 1024 * 1024


def bench_files() -> list[Path]:
    """The random files, written once (temporary name, then renamed) and reused."""
    cache = Path.home() / ".cache" / "corral" / "bench" / "random-1GB"
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"model-{i + 1:05d}-of-{FILES:05d}.safetensors" for i in range(FILES)]
    for path in paths:
        if path.exists() and path.stat().st_size == FILE_SIZE:
            continue
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            for _ in range(FILE_SIZE // (16 << 20)):
                handle.write(os.urandom(16 << 20))
        os.replace(tmp, path)
    return paths


def serve(root: Path, files: list[Path]) -> HubServer:
    server = HubServer(root)
    branch = server.branch_dir(REPO)
    for path in files:
        os.link(path, branch / path.name)
    (branch / "config.json").write_text('{"model_type": "llama"}\n')
    return server.start()


def plain_loop(server: HubServer, names: list[str], target: Path) -> float:
    start = time.perf_counter()
    for name in names:
        hf_hub_download(REPO, name, local_dir=target, endpoint=server.url)
    return time.perf_counter() - start


def ours(server: HubServer, target: Path, threads: int) -> float:
    os.environ["HF_ENDPOINT"] = server.url
    ref = download.RepoRef(REPO)
    start = time.perf_counter()
    plan = download.choose_files(download.list_files(ref))
    tracker = download.ProgressTracker(ref, target)
    download.run_plan(plan, target, tracker, threading.Event(), threads=threads)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=download.DEFAULT_THREADS)
    parser.add_argument("--rounds", type=int, default=2, help="alternate both ways this many times, keep the best")
    args = parser.parse_args()
    files = bench_files()
    total = sum(p.stat().st_size for p in files) + len('{"model_type": "llama"}\n')
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        server = serve(Path(tmp) / "hub", files)
        try:
            os.environ["HF_ENDPOINT"] = server.url
            download.list_files(download.RepoRef(REPO))  # the server hashes its files once, outside the timings
            names = [p.name for p in files] + ["config.json"]
            plain_s = ours_s = float("inf")
            for _ in range(args.rounds):  # alternate, so neither side always runs on a warmer cache
                plain_s = min(plain_s, plain_loop(server, names, Path(tmp) / "plain"))
                shutil.rmtree(Path(tmp) / "plain")
                ours_s = min(ours_s, ours(server, Path(tmp) / "ours", args.threads))
                shutil.rmtree(Path(tmp) / "ours")
        finally:
            server.stop()
    plain_mbs, ours_mbs = total / plain_s / 1e6, total / ours_s / 1e6
    print(f"best of {args.rounds} rounds; {len(names)} files, {total / 1e6:.0f} MB; hub server on 127.0.0.1")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"hf_hub_download loop (1 stream):        {plain_s:6.2f} s  {plain_mbs:7.1f} MB/s")
    print(f"corral downloader ({args.threads} threads, sha256): {ours_s:6.2f} s  {ours_mbs:7.1f} MB/s")
    print(f"ratio corral / plain: {ours_mbs / plain_mbs:.2f}x")


if __name__ == "__main__":
    main()
