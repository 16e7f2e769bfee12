"""``python -m webui.estimate PATH | REPO[:BRANCH] [--ctx N] [--gpu-layers N] [--gpu-gib G] [--loader L]``: the
memory estimate as JSON on stdout (exit 0, or 1 when it won't fit); a problem is one line on stderr (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from loaders.errors import CorralError
from loaders.files import read_model_files
from loaders.hardware import GIB, GPU, Hardware, snapshot
from loaders.plan import plan_load
from loaders.settings import settings_for
from webui.estimate.arithmetic import Estimate
from webui.estimate.hub import estimate_remote
from webui.estimate.local import estimate_plan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.estimate", description="Estimate a model's memory.")
    parser.add_argument("model", help="a local folder or .gguf file, or owner/repo[:branch] on the Hub")
    parser.add_argument("--file", default="", help="which .gguf file")
    parser.add_argument("--ctx", type=int, default=0, help="context length (default: the loader's / model's)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (default 0)")
    parser.add_argument("--gpu-gib", type=float, default=0, help="pretend this machine has a GPU with G GiB free")
    parser.add_argument("--loader", default="", help="transformers | gptq | llama.cpp | gguf (default: by format)")
    args = parser.parse_args(argv)
    hw = _hardware(args.gpu_gib)
    try:
        est = _estimate(args, hw)
    except CorralError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(est.to_dict(hw) | {"hardware": hw.to_dict()}, indent=2))
    return 0 if est.fit(hw).verdict != "won't fit" else 1


def _hardware(gpu_gib: float) -> Hardware:
    hw = snapshot()
    if gpu_gib <= 0:
        return hw
    size = int(gpu_gib * GIB)
    return replace(hw, gpus=(GPU(0, f"assumed {gpu_gib:g} GiB GPU", size, size),))


def _estimate(args: argparse.Namespace, hw: Hardware) -> Estimate:
    path = Path(args.model)
    if not path.exists():
        return estimate_remote(args.model, file=args.file or None, ctx=args.ctx or None, n_gpu_layers=args.gpu_layers,
                               loader=args.loader or None, hw=hw)  # fmt: skip
    from loaders.detect import detect_files

    files = read_model_files(path, gguf_file=args.file)
    loader = args.loader or detect_files(files).loader
    values = {"n_gpu_layers": args.gpu_layers} | ({"n_ctx": args.ctx, "context_length": args.ctx} if args.ctx else {})
    return estimate_plan(plan_load(loader, files, settings_for(loader, values), hw))


if __name__ == "__main__":
    sys.exit(main())
