"""The web-facing checks of issue 13, over real HTTP on 127.0.0.1: Host / Origin (DNS rebinding, cross-site
requests) on the API (in-process, SmolLM2 GGUF loaded) and on the UI (app.py as a subprocess); JSON-only POSTs;
`trust_remote_code` only by the `--trust-remote-code` flag; request caps and the OpenAI error shape for bad bodies.

A model folder here holds a `configuration_custom.py` that writes a marker file when imported: the proof that no
refused request ran a model's code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loaders.errors import SettingsError, UnsupportedModelError
from tests.browser import free_port, start_app, stop_app
from tests.conftest import link_tree
from webui.api import ApiServer
from webui.listen import allowed_hosts, hosts_of_args
from webui.state import AppConfig, AppState

GGUF, EVIL = "SmolLM2-135M-Instruct-GGUF", "evil-remote-code"
JSON = {"Content-Type": "application/json"}


def make_models(root: Path, smollm2_hf: Path, smollm2_gguf: Path) -> Path:
    """A models folder with the GGUF and a Transformers folder whose config needs its own code (a marker file)."""
    models = root / "models"
    link_tree(smollm2_gguf.parent, models / GGUF)
    evil = link_tree(smollm2_hf, models / EVIL)
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="corral_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (evil / "config.json").unlink()  # a hard link to the shared fixture: replace, never write through
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "configuration_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker(root))!r}).write_text('remote code ran')\n"
        "from transformers import LlamaConfig\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'corral_custom'\n"
    )
    return models


def marker(root: Path) -> Path:
    return root / "REMOTE-CODE-RAN"


def assert_openai_error(response: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    assert response.status_code in ((status,) if isinstance(status, int) else status), response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# --- the API ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_root(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path, smollm2_gguf: Path) -> Path:
    root = tmp_path_factory.mktemp("security-api")
    make_models(root, smollm2_hf, smollm2_gguf)
    return root


@pytest.fixture(scope="module")
def api(api_root: Path) -> Iterator[ApiServer]:
    state = AppState(config=AppConfig(models_dir=api_root / "models"))
    state.models.load(GGUF, loader_settings={"n_ctx": 512}, confirm_memory=True)
    server = ApiServer(state, host="127.0.0.1", port=free_port()).start()
    yield server
    server.stop()
    state.models.unload()


def url(api: ApiServer, path: str) -> str:
    return f"http://127.0.0.1:{api.port}{path}"


def still_loaded(api: ApiServer) -> None:
    assert api.state.models.current is not None and api.state.models.current_info.view.name == GGUF
    reply = httpx.post(url(api, "/v1/completions"), json={"prompt": "The sky is", "max_tokens": 2}, timeout=120)
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"]


def test_api_refuses_a_foreign_host(api: ApiServer) -> None:
    """DNS rebinding: evil.example resolving to 127.0.0.1 reaches the socket, but names its own host."""
    for host in (f"evil.example:{api.port}", "evil.example", f"127.0.0.1:{api.port + 1}", f"localhost.evil:{api.port}"):
        headers = {"Host": host}
        assert_openai_error(httpx.get(url(api, "/v1/models"), headers=headers), 403, "host_not_allowed")
        unload = httpx.post(url(api, "/v1/internal/model/unload"), json={}, headers=headers)
        assert_openai_error(unload, 403, "host_not_allowed")
    for host in (f"127.0.0.1:{api.port}", f"localhost:{api.port}", f"[::1]:{api.port}", f"LOCALHOST:{api.port}"):
        assert httpx.get(url(api, "/v1/models"), headers={"Host": host}).status_code == 200
    still_loaded(api)


def test_cross_site_simple_requests_change_nothing(api: ApiServer) -> None:
    """A web page's form or no-cors fetch: text/plain (or a form) body, foreign Origin, no preflight."""
    unload = url(api, "/v1/internal/model/unload")
    cross = httpx.post(unload, content=b"{}", headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert_openai_error(cross, 403, "origin_not_allowed")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        same = httpx.post(unload, content=b"{}", headers={"Content-Type": content_type})
        assert_openai_error(same, 415, "unsupported_media_type")
    assert_openai_error(httpx.post(unload), 415, "unsupported_media_type")
    for origin in ("http://evil.example", "null", f"http://evil.example:{api.port}", f"http://127.0.0.1:{api.port+1}"):
        refused = httpx.post(unload, json={}, headers={"Origin": origin})
        assert_openai_error(refused, 403, "origin_not_allowed")
    still_loaded(api)
    ours = httpx.post(url(api, "/v1/internal/token-count"), json={"text": "Hi"},
                      headers={"Origin": f"http://127.0.0.1:{api.port}"})
    assert ours.status_code == 200 and ours.json()["length"] >= 1


def test_api_load_with_remote_code_is_refused_without_the_flag(api: ApiServer, api_root: Path) -> None:
    body = {"model_name": EVIL, "loader": "transformers", "settings": {"trust_remote_code": True}}
    error = assert_openai_error(httpx.post(url(api, "/v1/internal/model/load"), json=body, timeout=120), 400)
    assert "--trust-remote-code" in error["message"]
    assert not marker(api_root).exists()
    still_loaded(api)


def test_invalid_loads_leave_the_running_model_loaded(api: ApiServer) -> None:
    load = url(api, "/v1/internal/model/load")
    for settings in ({"n_ctx": {"a": "setting of the wrong type"}}, {"file": "../../etc/passwd"}):
        response = httpx.post(load, json={"model_name": GGUF, "settings": settings}, timeout=120)
        assert_openai_error(response, 400)
        still_loaded(api)


def test_bad_bodies_are_400_in_the_openai_shape(api: ApiServer) -> None:
    completions = url(api, "/v1/completions")
    escaped = httpx.post(completions, content=b'{"prompt": "\\ud800", "max_tokens": 2}', headers=JSON)
    assert_openai_error(escaped, 400, "invalid_unicode")
    raw = httpx.post(completions, content=b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}', headers=JSON)
    assert_openai_error(raw, 400)
    chat = {"messages": [{"role": "user", "content": "\ud800"}]}
    escaped_chat = httpx.post(url(api, "/v1/chat/completions"), content=json.dumps(chat).encode(), headers=JSON)
    assert_openai_error(escaped_chat, 400, "invalid_unicode")
    deep = httpx.post(completions, content=b"[" * 100_000 + b"]" * 100_000, headers=JSON)
    assert_openai_error(deep, 400, "json_too_deep")
    stop: Any = "x"
    for _ in range(70):  # parseable, yet deeper than any request needs
        stop = [stop]
    nested = {"prompt": "hi", "stop": stop}
    assert_openai_error(httpx.post(completions, json=nested), 400, "json_too_deep")
    assert_openai_error(httpx.post(completions, content=b'{"prompt": ', headers=JSON), 400)
    still_loaded(api)


def test_huge_prompts_and_bodies_are_refused_before_queueing(api: ApiServer) -> None:
    limit = api.state.config.max_prompt_chars
    long_prompt = httpx.post(url(api, "/v1/completions"), json={"prompt": "a" * (limit + 1)}, timeout=60)
    assert_openai_error(long_prompt, 400, "prompt_too_long")
    messages = [{"role": "user", "content": "a" * (limit // 2 + 1)}] * 2
    long_chat = httpx.post(url(api, "/v1/chat/completions"), json={"messages": messages}, timeout=60)
    assert_openai_error(long_chat, 400, "prompt_too_long")
    huge = b'{"prompt": "' + b"a" * (api.state.config.max_body_bytes + 1) + b'"}'
    assert_openai_error(httpx.post(url(api, "/v1/completions"), content=huge, headers=JSON, timeout=60), 413,
                        "request_too_large")
    assert api.state.generation.count_tokens("x") >= 1  # nothing stuck in line
    still_loaded(api)


def test_unexpected_errors_are_500_in_the_openai_shape(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_text: str) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.state.generation, "count_tokens", broken)
    response = httpx.post(url(api, "/v1/internal/token-count"), json={"text": "Hi"})
    assert assert_openai_error(response, 500)["type"] == "server_error"
    assert_openai_error(httpx.get(url(api, "/v1/nothing-here")), 404)
    assert_openai_error(httpx.delete(url(api, "/v1/models")), 405)


# --- the model service and the flag -------------------------------------------------------------------------------


def test_remote_code_only_by_the_flag(api_root: Path) -> None:
    models = api_root / "models"
    state = AppState(config=AppConfig(models_dir=models))
    with pytest.raises(SettingsError, match="--trust-remote-code"):  # what the Model tab's load calls
        state.models.load(EVIL, loader="transformers", loader_settings={"trust_remote_code": True})
    with pytest.raises(SettingsError, match="--trust-remote-code"):
        state.models.inspect(EVIL, loader="transformers", loader_settings={"trust_remote_code": True})
    with pytest.raises(UnsupportedModelError, match="--trust-remote-code"):  # the model says what it needs
        state.models.load(EVIL, loader="transformers", confirm_memory=True)
    assert not marker(api_root).exists() and state.models.current is None
    # saved settings cannot turn it on either: the view (the Model tab's read-only box) shows the flag's value
    state.models.save_settings(EVIL, "transformers", {"trust_remote_code": True}, template=None, preset=None)
    assert state.models.inspect(EVIL, loader="transformers").resolved.loader_settings.trust_remote_code is False
    flagged = AppState(config=AppConfig(models_dir=models, trust_remote_code=True))
    assert flagged.models.inspect(EVIL, loader="transformers").resolved.loader_settings.trust_remote_code is True


def test_allowed_hosts_flag() -> None:
    def args(**kw: object) -> argparse.Namespace:
        return argparse.Namespace(**({"listen": False, "allowed_hosts": None} | kw))

    loopback = hosts_of_args(args(allowed_hosts="corral.lan"), "127.0.0.1")
    assert not loopback.allows("corral.lan:7860", 7860)  # only counts with --listen
    listening = hosts_of_args(args(listen=True, allowed_hosts="corral.lan, proxy.example:443"), "10.0.0.2")
    assert listening.allows("corral.lan:7860", 7860) and listening.allows("CORRAL.LAN:7860", 7860)
    assert not listening.allows("corral.lan:7861", 7860)
    assert listening.allows("proxy.example:443", 7860) and not listening.allows("proxy.example:7860", 7860)
    assert listening.allows("10.0.0.2:7860", 7860) and listening.allows("[::1]:7860", 7860)
    assert not listening.allows("evil.example:7860", 7860) and not listening.allows("", 7860)
    assert not allowed_hosts("127.0.0.1").allows("user@127.0.0.1:7860", 7860)
    with pytest.raises(SystemExit, match="--allowed-hosts"):
        hosts_of_args(args(listen=True, allowed_hosts="http://x/"), "0.0.0.0")


# --- the UI -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path, smollm2_gguf: Path):
    root = tmp_path_factory.mktemp("security-ui")
    running = start_app(make_models(root, smollm2_hf, smollm2_gguf), root)
    running.root = root  # type: ignore[attr-defined]
    yield running
    stop_app(running)


def load_event(base: str) -> tuple[int, list[Any]]:
    """The Model tab's Load event (fn_index) and its inputs as a page would send them, asking for remote code."""
    config = httpx.get(f"{base}/config").json()
    components = {c["id"]: c for c in config["components"]}
    index, dependency = next((i, d) for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "on_load")
    chosen = {"model-dropdown": EVIL, "model-loader": "transformers", "transformers-trust_remote_code": True}
    data = []
    for component_id in dependency["inputs"]:
        props = components[component_id].get("props", {})
        data.append(chosen.get(props.get("elem_id"), props.get("value")))
    assert data.count(EVIL) == 1 and True in data, "the Load event's inputs changed: find the model and the flag"
    return index, data


def test_ui_refuses_a_foreign_host_and_origin(ui) -> None:
    base = ui.url.rstrip("/")
    port = base.rsplit(":", 1)[1]
    assert httpx.get(f"{base}/").status_code == 200
    assert httpx.get(f"{base}/", headers={"Host": f"localhost:{port}"}).status_code == 200
    for headers in ({"Host": f"evil.example:{port}"}, {"Origin": "http://evil.example"}):
        assert httpx.get(f"{base}/", headers=headers).status_code == 403
        assert httpx.get(f"{base}/config", headers=headers).status_code == 403
    index, data = load_event(base)
    for headers in ({"Host": f"evil.example:{port}"}, {"Origin": f"http://evil.example:{port}"},
                    {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}):
        join = httpx.post(f"{base}/gradio_api/queue/join", headers=headers,
                          json={"data": data, "fn_index": index, "session_hash": "attacker", "event_data": None})
        call = httpx.post(f"{base}/gradio_api/call/on_load", headers=headers, json={"data": data})
        assert join.status_code == 403 and call.status_code == 403, (join.text, call.text)
    assert not marker(ui.root).exists()
    assert "Refused a request to /gradio_api/queue/join" in ui.log_text()


def run_event(base: str, index: int, data: list[Any], session: str) -> str:
    """One UI event as our own page sends it (queue join, then its event stream); the stream's text."""
    join = httpx.post(f"{base}/gradio_api/queue/join",
                      json={"data": data, "fn_index": index, "session_hash": session, "event_data": None})
    assert join.status_code == 200, join.text
    text = ""
    with httpx.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as stream:
        for chunk in stream.iter_text():
            text += chunk
            if "process_completed" in text:
                break
    return text


def test_ui_load_with_remote_code_is_refused_without_the_flag(ui) -> None:
    """The same event from our own page (the right Host, after the page's load filled the model list): the model
    service refuses, naming the flag."""
    base = ui.url.rstrip("/")
    config = httpx.get(f"{base}/config").json()
    dropdown = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "model-dropdown")
    page_load = next(i for i, d in enumerate(config["dependencies"])
                     if d.get("api_name", "").startswith("on_page_load") and dropdown in d["outputs"])
    first = run_event(base, page_load, [], "own-page")
    assert "process_completed" in first and EVIL in first, first
    index, data = load_event(base)
    text = run_event(base, index, data, "own-page")
    assert "--trust-remote-code" in text, text
    assert not marker(ui.root).exists()


def test_listen_serves_the_allowed_hosts_only(tmp_path: Path) -> None:
    """`--listen --allowed-hosts NAME`: the UI answers for NAME (and loopback), still for no other name."""
    (tmp_path / "models").mkdir()
    running = start_app(tmp_path / "models", tmp_path, "--listen", "--insecure-listen", "--allowed-hosts",
                        "corral.test,proxy.test:443")
    try:
        base = running.url.rstrip("/")
        port = base.rsplit(":", 1)[1]
        for host, status in ((f"corral.test:{port}", 200), ("proxy.test:443", 200), (f"127.0.0.1:{port}", 200),
                             (f"evil.example:{port}", 403), (f"proxy.test:{port}", 403)):
            assert httpx.get(f"{base}/", headers={"Host": host}).status_code == status, host
    finally:
        stop_app(running)
