"""Estimates of models on the Hub, before anything is downloaded.

The Hub's file list (sizes), config.json / quantize_config.json, the safetensors headers (`get_safetensors_metadata`)
and the first bytes of a GGUF file (HTTP Range) become the same typed records a local folder gives (`ModelFiles`),
through the same parsers and the same GGUF choice; the estimate then prices the loader's plan for them, as for a
model on disk. The weights themselves are never fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.detect import default_n_ctx
from loaders.errors import CorralError, ModelFormatError
from loaders.files import ChatFacts, ModelFiles, ModelShape
from loaders.files.gguf_choice import choose_gguf, group_gguf
from loaders.files.gguf_header import FIRST_READ, GGUFHeader, TruncatedHeader, parse_gguf_header
from loaders.files.jsonfile import parse_json_object
from loaders.files.quant_config import QUANTIZE_CONFIG, gptq_config
from loaders.files.safetensors_header import SafetensorsTensor
from loaders.files.weights import SAFETENSORS_INDEX, find_weight_files
from loaders.hardware import Hardware, snapshot
from loaders.plan import plan_load
from loaders.settings import settings_for
from webui.download import RemoteFile, hub_endpoint, list_files, parse_repo
from webui.download.hub import hub_errors_as_corral
from webui.estimate.arithmetic import Estimate
from webui.estimate.local import estimate_plan


@dataclass(frozen=True)
class FileEstimate:
    """One row of the Model tab's file list: a .gguf file or a branch, its RAM / VRAM and the fit mark."""

    name: str
    ram: int
    vram: int
    verdict: str
    estimate: Estimate | None = None
    error: str = ""


def estimate_remote(
    repo_ref: str, *, file: str | None = None, ctx: int | None = None, n_gpu_layers: int = 0,
    token: str | bool | None = None, loader: str | None = None, hw: Hardware | None = None,
) -> Estimate:  # fmt: skip
    """Estimate a Hub model before downloading it: `owner/repo[:branch]`; `file` picks one of its .gguf files."""
    files = remote_model_files(repo_ref, file=file, token=token)
    loader = loader or ("llama.cpp" if files.format == "gguf" else "gptq" if files.gptq else "transformers")
    context_key = "n_ctx" if files.format == "gguf" else "context_length"
    # Unless asked, the context the model will be loaded with: detection's default, as for a model on disk.
    default = default_n_ctx(files.shape.context_max) if files.format == "gguf" else files.shape.context_max
    values = {context_key: ctx or default, "n_gpu_layers": n_gpu_layers}
    return estimate_plan(plan_load(loader, files, settings_for(loader, values), hw or snapshot()))


def remote_model_files(repo_ref: str, *, file: str | None = None, token: str | bool | None = None) -> ModelFiles:
    """The records of a Hub branch's model, read from the listing and the headers only."""
    ref = parse_repo(repo_ref)
    listing = list_files(ref, token=token).files
    top = [f for f in listing if "/" not in f.path]
    ggufs = group_gguf((f.path, f.size) for f in top if f.path.endswith(".gguf"))
    where = Path(ref.repo_id.replace("/", "_"))
    with hub_errors_as_corral(ref, endpoint=hub_endpoint(), token=token if isinstance(token, str) else None):
        if file or (ggufs and not any(f.path == "config.json" for f in top)):
            chosen, why = choose_gguf(ggufs, wanted=file)
            header = fetch_gguf_header(ref.repo_id, chosen.name, revision=ref.branch, token=token, size=chosen.size)
            shape = ModelShape.from_gguf(header.metadata, (t.name for t in header.tensors))
            return ModelFiles(path=where, folder=where, format="gguf", shape=shape, chat=ChatFacts(),
                              ggufs=tuple(ggufs), gguf=chosen, gguf_reason=why, header=header)  # fmt: skip
        return _remote_hf(ref.repo_id, ref.branch, top, where, token=token)


def _remote_hf(repo: str, revision: str, files: Sequence[RemoteFile], where: Path, *,
               token: str | bool | None) -> ModelFiles:  # fmt: skip
    names = {f.path for f in files}
    if "config.json" not in names:
        raise ModelFormatError(f"{repo} has neither a .gguf file nor a config.json: cannot estimate it")
    config = _remote_json(repo, "config.json", revision, token)
    quantize = _remote_json(repo, QUANTIZE_CONFIG, revision, token) if QUANTIZE_CONFIG in names else None
    gptq = gptq_config(config, quantize)
    index = _remote_json(repo, SAFETENSORS_INDEX, revision, token) if SAFETENSORS_INDEX in names else None
    try:
        weights = find_weight_files(names, index=index, base_name=gptq.base_name if gptq else "")
    except ModelFormatError:
        if gptq is None:
            raise
        weights = None  # not uploaded yet, or listed elsewhere: the GPTQ config and the shape still tell the sizes
    tensors = _remote_tensors(repo, revision, token) if weights and weights.format == "safetensors" else []
    chosen = set(weights.names if weights else ())
    return ModelFiles(path=where, folder=where, format="hf", shape=ModelShape.from_config(config), chat=ChatFacts(),
                      config=config, gptq=gptq, weights=weights, tensors=tuple(tensors),
                      remote_bytes=sum(f.size for f in files if f.path in chosen))  # fmt: skip


def _remote_json(repo: str, name: str, revision: str | None, token: str | bool | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = Path(hf_hub_download(repo, name, revision=revision, token=token, endpoint=hub_endpoint()))
    return parse_json_object(path.read_bytes(), f"{repo}/{name}")


def _remote_tensors(repo: str, revision: str | None, token: str | bool | None) -> list[SafetensorsTensor]:
    from huggingface_hub import HfApi

    meta = HfApi(endpoint=hub_endpoint()).get_safetensors_metadata(repo, revision=revision, token=token)
    return [
        SafetensorsTensor(name, info.dtype, tuple(info.shape), info.data_offsets[1] - info.data_offsets[0])
        for file_meta in meta.files_metadata.values()
        for name, info in file_meta.tensors.items()
    ]


def fetch_gguf_header(
    repo: str, name: str, *, revision: str | None = None, token: str | bool | None = None, first: int = FIRST_READ,
    size: int | None = None,
) -> GGUFHeader:  # fmt: skip
    """The header of a GGUF file on the Hub from its first bytes (HTTP Range), growing the range as needed."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = hf_hub_url(repo, name, revision=revision, endpoint=hub_endpoint())
    wanted = first
    while True:
        headers = {**build_hf_headers(token=token), "range": f"bytes=0-{wanted - 1}"}
        response = get_session().get(url, headers=headers, follow_redirects=True)
        hf_raise_for_status(response)
        data = response.content[:wanted]  # a server that ignores Range sends the whole file: parse what we asked for
        try:
            return parse_gguf_header(data, file_size=size or None)
        except TruncatedHeader:
            if len(data) < wanted:  # the server sent the whole file and the header is still incomplete
                raise ModelFormatError(f"{repo}/{name}: the file ends inside its GGUF header") from None
            wanted *= 4


def per_file(
    repo_ref: str, *, ctx: int | None = None, n_gpu_layers: int = 0, hw: Hardware | None = None,
    token: str | bool | None = None, branches: Sequence[str] = (),
) -> list[FileEstimate]:  # fmt: skip
    """One row per .gguf file of the repo (or per branch in `branches` for a GPTQ/Transformers repo)."""
    hw = hw or snapshot()
    ref = parse_repo(repo_ref)
    if branches:
        rows = [(f"{ref.repo_id}:{b}", None, b) for b in branches]
    else:
        top = [f for f in list_files(ref, token=token).files if "/" not in f.path]
        ggufs = [c.name for c in group_gguf((f.path, f.size) for f in top if f.path.endswith(".gguf"))]
        rows = [(repo_ref, g, g) for g in ggufs] or [(repo_ref, None, ref.branch)]
    return [_row(target, file, label, ctx, n_gpu_layers, hw, token) for target, file, label in rows]


def _row(
    ref: str, file: str | None, label: str, ctx: int | None, n_gpu_layers: int, hw: Hardware, token: str | bool | None
) -> FileEstimate:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        est = estimate_remote(ref, file=file, ctx=ctx, n_gpu_layers=n_gpu_layers, token=token, hw=hw)
    except (HfHubHTTPError, CorralError) as error:
        return FileEstimate(label, 0, 0, "unknown", None, str(error))
    return FileEstimate(label, est.ram, est.vram, est.fit(hw).verdict, est)
