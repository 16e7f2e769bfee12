"""Download throughput: Corral's downloader against `huggingface_hub.snapshot_download(max_workers=8)`, in one run.

Serves a repo of random `.safetensors` files (8 x 32 MiB by default, built once under ~/.cache/corral/bench) from
tests/hubserver.py on 127.0.0.1 and downloads the same files both ways, each into a fresh folder. The peer is the
client's own parallel snapshot download, not a serial `hf_hub_download` loop, so the comparison is fair on
concurrency. Both include writing to disk; ours also hashes every file (sha256) while it streams.
Run: `installer_files/env/bin/python -m bench.download [--threads N] [--files N] [--file-mib N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.utils import disable_progress_bars

from tests.hubserver import HubServer
from webui import download

PEER_WORKERS = 8
CONFIG = '{"model_type": "llama"}\n'


def bench_files(count: int, size: int) -> list[Path]:
    """The random files, written once (temporary name, then renamed) and reused."""
    cache = Path.home() / ".cache" / "corral" / "bench" / f"random-{count}x{size >> 20}MiB"
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    for path in paths:
        if path.exists() and path.stat().st_size == size:
            continue
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            for _ in range(size // (16 << 20)):
                handle.write(os.urandom(16 << 20))
            handle.write(os.urandom(size % (16 << 20)))
        os.replace(tmp, path)
    return paths


def serve(root: Path, repo: str, files: list[Path]) -> HubServer:
    server = HubServer(root)
    branch = server.branch_dir(repo)
    for path in files:
        os.link(path, branch / path.name)
    (branch / "config.json").write_text(CONFIG)
    return server.start()


def peer(server: HubServer, repo: str, target: Path) -> float:
    start = time.perf_counter()
    snapshot_download(repo, local_dir=target, endpoint=server.url, max_workers=PEER_WORKERS)
    return time.perf_counter() - start


def ours(repo: str, target: Path, threads: int) -> float:
    ref = download.RepoRef(repo)
    start = time.perf_counter()
    plan = download.choose_files(download.list_files(ref))
    tracker = download.ProgressTracker(ref, target)
    download.run_plan(plan, target, tracker, threading.Event(), threads=threads)
    return time.perf_counter() - start


def _same_files(a: Path, b: Path) -> bool:
    def names(folder: Path) -> set[str]:
        return {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}

    return names(a) == names(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=download.DEFAULT_THREADS, help="Corral's files at once")
    parser.add_argument("--files", type=int, default=8, help="random weight files in the repo")
    parser.add_argument("--file-mib", type=int, default=32, help="size of each, MiB")
    parser.add_argument("--rounds", type=int, default=2, help="alternate both ways this many times, keep the best")
    args = parser.parse_args()
    disable_progress_bars()  # the peer's tqdm bars would interleave with the results
    repo = f"corral-bench/random-{args.files}x{args.file_mib}MiB"
    files = bench_files(args.files, args.file_mib << 20)
    total = sum(p.stat().st_size for p in files) + len(CONFIG)
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        server = serve(Path(tmp) / "hub", repo, files)
        try:
            os.environ["HF_ENDPOINT"] = server.url
            download.list_files(download.RepoRef(repo))  # the server hashes its files once, outside the timings
            peer_s = ours_s = float("inf")
            for _ in range(args.rounds):  # alternate, so neither side always runs on a warmer cache
                peer_s = min(peer_s, peer(server, repo, Path(tmp) / "peer"))
                ours_s = min(ours_s, ours(repo, Path(tmp) / "ours", args.threads))
                assert _same_files(Path(tmp) / "peer", Path(tmp) / "ours"), "the two did not fetch the same files"
                shutil.rmtree(Path(tmp) / "peer")
                shutil.rmtree(Path(tmp) / "ours")
        finally:
            server.stop()
    peer_mbs, ours_mbs = total / peer_s / 1e6, total / ours_s / 1e6
    print(f"best of {args.rounds} rounds; {len(files) + 1} files, {total / 1e6:.0f} MB; hub server on 127.0.0.1")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"snapshot_download (max_workers={PEER_WORKERS}):      {peer_s:6.2f} s  {peer_mbs:7.1f} MB/s")
    print(f"corral downloader ({args.threads} threads, sha256): {ours_s:6.2f} s  {ours_mbs:7.1f} MB/s")
    print(f"ratio corral / snapshot_download: {ours_mbs / peer_mbs:.2f}x")


if __name__ == "__main__":
    main()
