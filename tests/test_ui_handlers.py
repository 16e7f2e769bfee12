"""The tabs' handlers and views without a browser (issue 14): handlers are plain functions of named values; a page
opens on the server's state; the Prompt view shows the engine's own tokens; the memory bar and the job list are
HTML drawn from the estimate and the jobs. Fake models (tests/test_chat_turn.py), so these run in seconds."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from loaders.base import GenerationParams, MemoryReport
from loaders.hardware import GPU, Hardware
from loaders.units import format_bytes
from tests.test_chat_merge import fake_app
from tests.test_chat_turn import FakeModel, FakeTokenizer, info, own_template
from webui.engine import encode_prompt
from webui.estimate import Estimate
from webui.prompt_record import BUSY, GONE, PromptLog
from webui.state import AppState
from webui.ui import chat_handlers as chat
from webui.ui import parameters
from webui.ui.job_list import jobs_html
from webui.ui.memory_bar import memory_html
from webui.ui.parameters import values_of
from webui.ui.prompt_view import prompt_html
from webui.ui.wiring import Ctx, _flatten, _nest, _to_components


@pytest.fixture()
def state(tmp_path: Path) -> AppState:
    return fake_app(tmp_path)


def turn_values(message: str = "", ref: dict | None = None, template: str = "auto") -> dict:
    params = values_of(GenerationParams(max_new_tokens=8, do_sample=False))
    return {"message": message, "ref": ref or {"id": None, "revision": 0}, "query": "", "params": params,
            "settings": {"mode": "instruct", "template": template, "system": "", "user_name": "You",
                         "bot_name": "Assistant"}}  # fmt: skip


def last(values) -> dict:
    *_, final = values
    return final


def test_named_values_nest_and_map_back_to_components() -> None:
    spec = {"a": "A", "fields": {"llama.cpp": {"n_ctx": "N"}, "gptq": {"bits": "B"}}}
    flat = _flatten(spec)
    assert list(flat.values()) == ["A", "N", "B"]
    assert _nest(dict(zip(flat, [1, 2, 3], strict=True))) == {"a": 1, "fields": {"llama.cpp": {"n_ctx": 2},
                                                                                  "gptq": {"bits": 3}}}  # fmt: skip
    assert _to_components({"fields": {"gptq": {"bits": 4}}}, spec) == {"B": 4}
    with pytest.raises(KeyError):
        _to_components({"nope": 1}, spec)


def test_a_send_shows_the_saved_chat_its_list_entry_and_its_prompt(state: AppState) -> None:
    final = last(chat.on_send(state, turn_values("Hello there"), Ctx("s")))
    (saved,) = state.history.list()
    assert final["message"] == ""
    assert final["ref"] == {"id": saved.id, "revision": state.history.load(saved.id).revision}
    assert final["chatbot"] == [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "ok"}]
    assert final["past"]["value"] == saved.id and "Hello there" in final["past"]["choices"][0][0]
    assert "[user:Hello there]" in final["prompt"] and "tokens/s" in final["status"]

    reopened = chat.on_page_load(state, {"ref": final["ref"]}, Ctx("new-page"))  # a reload: same chat, same prompt
    assert reopened["chatbot"] == final["chatbot"] and reopened["prompt"] == final["prompt"]
    assert reopened["settings"]["template"] == "auto"


def test_a_send_with_no_model_keeps_the_message(state: AppState) -> None:
    state.models._loaded = None
    (only,) = list(chat.on_send(state, turn_values("kept"), Ctx("s")))
    assert "message" not in only and "No model is loaded" in only["status"] and state.history.list() == []


def test_a_stale_tab_is_shown_the_chat_instead_of_editing_it(state: AppState) -> None:
    first = last(chat.on_send(state, turn_values("one"), Ctx("a")))
    last(chat.on_send(state, turn_values("two", first["ref"]), Ctx("b")))  # another tab, same chat
    shown = chat.on_remove_last(state, turn_values(ref=first["ref"]), Ctx("a"))
    assert "another tab" in shown["status"] and len(shown["chatbot"]) == 4  # nothing removed, all shown
    again = chat.on_remove_last(state, turn_values(ref=shown["ref"]), Ctx("a"))
    assert again["message"] == "two" and len(again["chatbot"]) == 2


def test_delete_asks_then_moves_the_chat_to_the_trash(state: AppState) -> None:
    ref = last(chat.on_send(state, turn_values("doomed"), Ctx("a")))["ref"]
    asked = chat.on_delete_ask(state, {"ref": ref}, Ctx("a"))
    assert asked["confirm"]["visible"] and "doomed" in asked["confirm_text"] and state.history.list()
    done = chat.on_delete_confirm(state, {"ref": ref, "query": ""}, Ctx("a"))
    assert not done["confirm"]["visible"] and state.history.list() == [] and done["chatbot"] == []
    assert "trash" in done["status"] and list(state.history.trash_dir.glob("*.json"))


def test_export_then_import_makes_a_second_chat(state: AppState) -> None:
    ref = last(chat.on_send(state, turn_values("export me"), Ctx("a")))["ref"]
    exported = chat.on_export(state, {"ref": ref}, Ctx("a"))
    json_path, md_path = exported["files"]["value"]
    assert md_path.endswith(".md") and "export me" in Path(md_path).read_text()
    imported = chat.on_import(state, {"upload": json_path, "query": ""}, Ctx("a"))
    assert "Imported a Corral chat" in imported["status"] and len(state.history.list()) == 2
    assert imported["ref"]["id"] != ref["id"]


def test_the_page_opens_with_the_models_preset_and_its_values(state: AppState, tmp_path: Path) -> None:
    state.models._loaded.view.resolved.preset = "Min-P"  # type: ignore[union-attr]
    state.models._loaded.view.detection = type("D", (), {"files": None})()  # type: ignore[union-attr]
    opened = parameters.on_page_load(state, {}, Ctx())
    assert opened["preset"]["value"] == "Min-P"
    assert (opened["params"]["top_k"], opened["params"]["min_p"], opened["params"]["top_p"]) == (0, 0.05, 1.0)
    state.models._loaded = None
    assert parameters.on_page_load(state, {}, Ctx())["preset"]["value"] == state.config.default_preset


def test_the_prompt_record_is_the_engines_own_tokens(state: AppState) -> None:
    log = state.prompts
    model = state.models.current
    last(chat.on_send(state, turn_values("Hi"), Ctx("a")))
    (saved,) = state.history.list()
    record = log.get(saved.id)
    params = GenerationParams(max_new_tokens=8, do_sample=False)
    assert [t.id for t in record.tokens] == encode_prompt(model, record.text, params)  # "<s>" written: no 2nd BOS
    assert record.n_tokens == len(record.tokens) and record.cut_tokens == 0
    assert "&lt;s&gt;" in prompt_html(record) and f"<b>{record.n_tokens} tokens</b>" in prompt_html(record)

    from webui.generation import Turn

    log.put("raw", state.models.current_info, Turn("ab", GenerationParams(truncation_length=4, max_new_tokens=1)))
    raw = log.get("raw")  # the engine adds BOS (id 1) and keeps 3 tokens of a 4-token window
    assert [(t.id, t.kind) for t in raw.tokens] == [(1, "bos"), (ord("a") + 10, ""), (ord("b") + 10, "")]
    assert 'class="tok bos"' in prompt_html(raw) and raw.cut_tokens == 0
    log.put("cut", state.models.current_info, Turn("abcdef", GenerationParams(truncation_length=4, max_new_tokens=1)))
    assert log.get("cut").cut_tokens == 4 and "cut from the start" in prompt_html(log.get("cut"))


def test_the_prompt_view_waits_for_a_busy_model_and_forgets_an_unloaded_one(state: AppState) -> None:
    log = PromptLog(lambda: state.models.current, state.model_gate)
    fake = state.models._loaded
    from webui.generation import Turn

    log.put("k", fake, Turn("abc", GenerationParams()))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with state.model_gate.exclusive():  # a load or an unload
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    assert log.get("k").note == BUSY  # a load holds the model: text only, tokens later
    release.set()
    thread.join()
    assert log.get("k").n_tokens == 4
    log.put("k2", fake, Turn("abc", GenerationParams()))
    state.models._loaded = info(FakeModel("other", FakeTokenizer("<s>", own_template("U")), "ok"), "other")
    assert log.get("k2").note == GONE and log.get("k2").tokens == ()


def test_the_memory_bar_draws_the_estimate_against_free_memory() -> None:
    est = Estimate(loader="llama.cpp", ctx=4096, n_gpu_layers=10, n_layers=30,
                   parts={"ram": {"weights": 600, "kv_cache": 200, "buffers": 100, "overhead": 100},
                          "cuda:0": {"weights": 300, "kv_cache": 100}},
                   grows={"ram": 200, "cuda:0": 100})  # fmt: skip
    hw = Hardware(ram_total=10_000, ram_available=5_000, gpus=(GPU(0, "Test GPU", 1000, 350),))
    html = memory_html(est, hw)
    ram, gpu = html.split('data-device="cuda:0"')
    assert f"{format_bytes(800)}</b> at load" in ram and f"{format_bytes(1000)}</b> at full context" in ram
    assert ">fits<" in ram and "GPU 0 (Test GPU)" in gpu and "won't fit" in gpu
    assert 'class="mb-mark free"' in gpu and 'class="mb-mark free"' not in ram
    loaded = memory_html(est, hw, loaded=MemoryReport(ram_bytes=0, vram_bytes={0: 200}))
    assert "won't fit" not in loaded.split('data-device="cuda:0"')[1]  # what the model holds is free for it
    assert "No memory estimate" in memory_html(None, hw)


def test_the_job_list_has_each_jobs_state_pick_and_buttons(tmp_path: Path) -> None:
    from webui.download import DownloadJob, RepoRef

    job = DownloadJob(RepoRef("owner/repo"), tmp_path / "owner_repo", gguf_file="m.Q8_0.gguf", token=None,
                      threads=1, retries=0, job_id="job-7")  # fmt: skip
    job._tracker.set("cancelled", "Download cancelled; the <part> is kept")
    html = jobs_html([job])
    assert 'data-job="job-7"' in html and 'data-action="resume"' in html and 'data-action="remove"' in html
    assert "GGUF: m.Q8_0.gguf" in html and "Cancelled" in html and "&lt;part&gt;" in html
    job._tracker.set("running", "")
    assert 'data-action="cancel"' in jobs_html([job]) and 'data-action="resume"' not in jobs_html([job])
    assert "No downloads yet" in jobs_html([])


def test_picking_a_model_applies_its_saved_preset_values_and_a_page_shows_the_loaded_model(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    from tests.conftest import link_tree
    from webui.settings import ModelSettings
    from webui.ui import model_handlers

    app = fake_app(tmp_path)
    app.models._loaded = None
    link_tree(smollm2_gguf.parent, app.config.models_dir / "SmolLM2-GGUF")
    app.settings.save("SmolLM2-GGUF", ModelSettings("llama.cpp", {"n_ctx": 1024}, "chatml", "Min-P", None))
    picked = model_handlers.on_select(app, {"name": "SmolLM2-GGUF"}, Ctx())
    assert picked["loader"] == "llama.cpp" and picked["fields"]["llama.cpp"]["n_ctx"] == 1024
    assert picked["preset"]["value"] == "Min-P" and picked["params"]["min_p"] == 0.05 and picked["params"]["top_k"] == 0
    assert picked["template"]["value"] == "chatml" and picked["groups"]["llama.cpp"]["visible"]
    assert "at load" in picked["memory"] and "Plan:" in picked["details"]
    page = model_handlers.on_page_load(app, {}, Ctx())
    assert page["name"]["value"] is None and page["status"].startswith("No model loaded")
    assert "SmolLM2-GGUF" in page["name"]["choices"]
