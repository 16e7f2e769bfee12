"""Browser-test helpers: start Corral the way the README does (a subprocess of app.py on a free port) and drive it
with Playwright on Debian's headless Chromium. Used by the `test_browser_*.py` modules through `corral_app` and
`page` fixtures that they import.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("CORRAL_SCREENSHOTS", tempfile.gettempdir())) / "corral-screenshots"
DOC_VIEWPORTS = ((1280, 800), (390, 844))


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    log: Path
    models_dir: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(
    models_dir: Path, workdir: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 120,
    port: int | None = None,
) -> RunningApp:
    """Start app.py on `port` (a free one by default; the same one again restarts "the same server")."""
    port = port or free_port()
    log = workdir / f"app-{port}.log"
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--models-dir", str(models_dir), "--port", str(port), *extra],
            cwd=workdir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = RunningApp(f"http://127.0.0.1:{port}/", process, log, models_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{app.log_text()[-4000:]}")
        try:
            urllib.request.urlopen(app.url, timeout=2).close()
            return app
        except OSError:
            time.sleep(0.5)
    stop_app(app)
    raise RuntimeError(f"app did not serve within {timeout} s:\n{app.log_text()[-4000:]}")


def start_hub_app(root: Path, hub_url: str) -> RunningApp:
    """The app on an empty models folder under `root`, downloading from the hub test server at `hub_url`."""
    (root / "models").mkdir(exist_ok=True)
    env = {"HF_ENDPOINT": hub_url, "HF_TOKEN": "", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return start_app(root / "models", root, env=env)


def stop_app(app: RunningApp) -> None:
    if app.process.poll() is None:
        os.killpg(app.process.pid, signal.SIGTERM)
        try:
            app.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(app.process.pid, signal.SIGKILL)


def app_port(app: RunningApp) -> int:
    return int(app.url.rstrip("/").rpartition(":")[2])


@contextmanager
def browser_context(width: int = 1400, height: int = 1000) -> Iterator:
    """A Playwright browser context on headless Chromium (one per module where scenarios share it); its pages
    share the browser's storage, as two tabs of one browser do."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); the browser tests need it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()
            browser.close()


@pytest.fixture()
def browser_page(tmp_path: Path) -> Iterator:
    """A Playwright page on headless Chromium (skips only when Playwright itself is missing)."""
    with browser_context() as context:
        yield context.new_page()


def wait_text(page, selector: str, *parts: str, timeout: float = 120_000) -> str:
    """Wait until the element's text holds every one of `parts`; returns the text."""
    page.wait_for_function(
        "([sel, parts]) => { const t = document.querySelector(sel)?.innerText || ''; "
        "return parts.every(p => t.includes(p)); }",
        arg=[selector, list(parts)],
        timeout=timeout,
    )
    return page.locator(selector).inner_text()


def doc_screenshots(page, name: str, focus: str | None = None) -> list[Path]:
    """With CORRAL_DOC_SCREENSHOTS=DIR: `DIR/<name>-1280x800.png` and `-390x844.png`, the viewport scrolled to
    `focus` (a selector), for docs/screenshots/. Costs nothing otherwise."""
    folder = os.environ.get("CORRAL_DOC_SCREENSHOTS")
    if not folder:
        return []
    Path(folder).mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    paths = []
    for width, height in DOC_VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)  # let the layout settle at the new width
        if focus:
            page.locator(focus).first.scroll_into_view_if_needed()
        path = Path(folder) / f"{name}-{width}x{height}.png"
        page.screenshot(path=str(path))
        paths.append(path)
    page.set_viewport_size(size)
    return paths


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def select_dropdown(page, elem_id: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown with `elem_id` (type to filter, then click the option)."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).first.click()
