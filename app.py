"""Corral: a local LLM web app. Parses the flags, builds the one AppState, then runs a one-shot generation
(`--prompt`) or launches the web UI.

    python app.py                                  # the web UI on http://127.0.0.1:7860
    python app.py --model NAME --prompt "Hi" --chat  # one reply on stdout, no server
    python app.py --api --nowebui --model NAME       # only the OpenAI-compatible API on http://127.0.0.1:5000/v1
    python app.py --model NAME --lora ADAPTER --lora-scale 0.8 --prompt "Hi"   # with a LoRA adapter
    python app.py --model NAME --infill --prompt "def f(x):<FILL_ME>return y"   # fill in the middle
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from loaders.errors import CorralError  # noqa: E402
from loaders.lora import AdapterChoice  # noqa: E402
from loaders.registry import loader_names  # noqa: E402
from loaders.settings import MAX_PARALLEL, parallel_problem  # noqa: E402
from webui.state import AppConfig, AppState  # noqa: E402

log = logging.getLogger("corral")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="Corral: run local LLMs in your browser.")
    server = parser.add_argument_group("web UI")
    server.add_argument("--listen", action="store_true", help="listen on all interfaces (default: 127.0.0.1 only)")
    server.add_argument("--listen-host", default=None, help="the address to bind with --listen (default 0.0.0.0)")
    server.add_argument("--port", type=int, default=7860, help="port of the web UI (default 7860)")
    server.add_argument("--gradio-auth", default=None, metavar="USER:PASS", help="require this login for the UI")
    server.add_argument("--insecure-listen", action="store_true", help="allow --listen without --gradio-auth")
    server.add_argument("--allowed-hosts", default=None, metavar="NAME[:PORT],...",
                        help="with --listen: the host names the UI and API are reached by (besides 127.0.0.1, "
                             "localhost and the bind address); requests naming any other host are refused")
    api = parser.add_argument_group("OpenAI-compatible API")
    api.add_argument("--api", action="store_true", help="serve the API too (bound like the UI: see --listen)")
    api.add_argument("--api-port", type=int, default=5000, help="port of the API (default 5000)")
    api.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (needed with --listen)")
    api.add_argument("--nowebui", action="store_true", help="serve only the API, no web UI (implies --api)")
    api.add_argument("--max-body-mb", type=float, default=8, help="largest API request body in MB (default 8)")
    api.add_argument("--max-prompt-chars", type=int, default=1_000_000,
                     help="longest API prompt in characters (default 1000000)")
    api.add_argument("--api-load-models", action="store_true",
                     help="let an API request load the model its 'model' field names (with that model's saved "
                          "settings, when the memory estimate fits), or reload with a larger 'num_ctx'")
    api.add_argument("--idle-unload", type=float, default=0, metavar="MINUTES",
                     help="unload the model after this many minutes unused (default 0: never); the next API "
                          "request for it loads it again")
    api.add_argument("--load-wait", type=float, default=300, metavar="SECONDS",
                     help="how long an API request waits for a model load under way (default 300)")
    api.add_argument("--embedding-model", default=None, metavar="NAME",
                     help="a model folder to load for /v1/embeddings only (mean-pooled, normalised)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="model folder (or .gguf file) under the models folder to load")
    model.add_argument("--models-dir", type=Path, default=None, help="models folder (default: ./models)")
    model.add_argument("--loras-dir", type=Path, default=None, help="LoRA adapters folder (default: ./loras)")
    model.add_argument("--lora", nargs="+", default=None, metavar="NAME",
                       help="LoRA adapters (in the loras folder) to apply to --model, in order")
    model.add_argument("--lora-scale", nargs="+", type=float, default=None, metavar="S",
                       help="the scale of each --lora adapter, in the same order (default 1 each)")
    model.add_argument("--data-dir", type=Path, default=None, help="where chats are kept (default: ./logs)")
    model.add_argument("--loader", choices=loader_names(), default=None, help="override the detected loader")
    model.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    model.add_argument("--parallel", type=int, default=None, metavar="N",
                       help="requests a local model decodes at once, each with its own KV cache (default: the "
                            "model's saved setting, else chosen from free memory); more wait in line")
    model.add_argument("--yes", action="store_true", help="load even when the memory estimate says it won't fit")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="let the transformers loader run Python code that comes with a model (only for "
                            "models whose authors you trust; the UI and the API cannot turn this on)")
    once = parser.add_argument_group("one-shot generation (prints the reply and exits; needs --model)")
    once.add_argument("--prompt", default=None, help="the prompt; with --chat, the user's message")
    once.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    once.add_argument("--system", default=None, help="system prompt (with --chat)")
    once.add_argument("--template", default=None, help="prompt template name (default: the model's own)")
    once.add_argument("--max-new-tokens", type=int, default=None)
    sampling = once.add_mutually_exclusive_group()
    sampling.add_argument("--greedy", action="store_true", help="deterministic: always the most likely token")
    sampling.add_argument("--preset", default=None, help="generation preset from presets/ (default: Default)")
    once.add_argument("--seed", type=int, default=None)
    once.add_argument("--show-prompt", action="store_true", help="print the exact prompt first, between markers")
    once.add_argument("--infill", action="store_true",
                      help="fill in the middle: the prompt holds <FILL_ME> where code is missing; prints the middle")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def build_state(args: argparse.Namespace) -> AppState:
    paths = {}
    if args.models_dir is not None:
        paths["models_dir"] = args.models_dir.resolve()
    if args.loras_dir is not None:
        paths["loras_dir"] = args.loras_dir.resolve()
    if args.data_dir is not None:
        paths["user_data_dir"] = args.data_dir.resolve()
    if args.max_body_mb <= 0 or args.max_prompt_chars <= 0:
        raise SystemExit("--max-body-mb and --max-prompt-chars must be positive")
    if args.parallel is not None and (args.parallel < 1 or parallel_problem(args.parallel)):
        raise SystemExit(f"--parallel takes a whole number from 1 to {MAX_PARALLEL}")
    if args.idle_unload < 0 or args.load_wait < 0:
        raise SystemExit("--idle-unload and --load-wait cannot be negative")
    limits = {"max_body_bytes": int(args.max_body_mb * 1_000_000), "max_prompt_chars": args.max_prompt_chars}
    on_demand = {"api_load_models": args.api_load_models, "idle_unload_minutes": args.idle_unload,
                 "load_wait_seconds": args.load_wait, "embedding_model": args.embedding_model}
    return AppState(config=AppConfig(force_cpu=args.cpu, default_loader=args.loader, parallel=args.parallel,
                                     trust_remote_code=args.trust_remote_code, **limits, **paths, **on_demand))


def start_services(state: AppState) -> None:
    """What runs beside the UI and the API: the idle unload, the embedding model."""
    state.model_switch.start()
    if state.config.embedding_model:
        from loaders.errors import CorralError

        try:
            state.embeddings.load(state.config.embedding_model)
        except CorralError as error:
            log.error("Could not load the embedding model %s: %s", state.config.embedding_model, error)


def lora_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[AdapterChoice, ...] | None:
    """`--lora A B --lora-scale 0.5 1` -> the adapters to apply to `--model` (None: the model's saved ones)."""
    if args.lora is None:
        if args.lora_scale is not None:
            parser.error("--lora-scale needs --lora")
        return None
    if args.model is None:
        parser.error("--lora needs --model")
    scales = args.lora_scale or [1.0] * len(args.lora)
    if len(scales) != len(args.lora):
        parser.error(f"--lora-scale gives {len(scales)} scales for {len(args.lora)} adapters: give one per adapter")
    try:
        return tuple(AdapterChoice(name, scale) for name, scale in zip(args.lora, scales, strict=True))
    except CorralError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    state = build_state(args)
    args.loras = lora_choices(parser, args)
    if args.prompt is None:
        start_services(state)
    if args.prompt is not None:
        if args.model is None:
            parser.error("--prompt needs --model")
        from webui.cli import run_once

        return run_once(state, args)
    if args.api or args.nowebui:
        from webui.api import launch_api

        if args.nowebui:
            return launch_api(state, args, foreground=True)
        launch_api(state, args, foreground=False)
    from webui.server import launch

    return launch(state, args)


if __name__ == "__main__":
    sys.exit(main())
