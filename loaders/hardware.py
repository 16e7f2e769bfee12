"""What this machine has: total and available RAM, each GPU's total and free memory, and CPU features.

`snapshot()` reads it once into a frozen `Hardware` record. The estimator (`webui/estimate.py`) takes a `Hardware`
argument rather than asking the machine itself, so tests can hand it a faked 8 / 12 / 24 GB GPU.
No GPU, no NVIDIA driver or no `pynvml` all mean "no GPUs", quickly and without an error.

NVIDIA GPUs: memory comes from NVML, but NVML numbers every GPU of the machine in PCI order while `cuda:N` counts
only the GPUs `CUDA_VISIBLE_DEVICES` lets through, in `CUDA_DEVICE_ORDER` (fastest first by default). So each NVML
device is matched to its CUDA ordinal by UUID, asked of the CUDA driver itself (`cuDeviceGetUuid`: no context is
created); without the driver API, `CUDA_VISIBLE_DEVICES` is read the way CUDA reads it. `GPU.index` is the CUDA
ordinal. Apple silicon: the Metal (MPS) device, with `torch.mps.recommended_max_memory` as its budget, is
`Hardware.mps` (its memory is the system's; only the PyTorch loaders use it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

GIB = 1024**3
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # /proc/cpuinfo: x86 (AVX512-BF16, AMX), ARM (bf16)


@dataclass(frozen=True)
class GPU:
    """One GPU; memory in bytes. `index`: the CUDA ordinal (`cuda:N`); `uuid`: NVML's "GPU-…" name of it."""

    index: int
    name: str
    total: int
    free: int
    uuid: str = ""
    kind: str = "cuda"  # "cuda" or "mps"

    @property
    def device(self) -> str:
        return "mps" if self.kind == "mps" else f"cuda:{self.index}"


@dataclass(frozen=True)
class NvmlDevice:
    """A GPU as NVML numbers it (every GPU of the machine, PCI order)."""

    nvml_index: int
    uuid: str
    name: str
    total: int
    free: int


@dataclass(frozen=True)
class Hardware:
    """RAM in bytes, the GPUs, and the CPU's feature flags (as in /proc/cpuinfo: avx2, avx512_bf16...)."""

    ram_total: int
    ram_available: int
    gpus: tuple[GPU, ...] = ()  # CUDA devices, by CUDA ordinal
    cpu_features: frozenset[str] = field(default_factory=frozenset)
    cpu_cores: int = 1
    mps: GPU | None = None  # Apple silicon's Metal device (unified memory)

    @property
    def cpu_bf16(self) -> bool:
        """True when the CPU computes in bf16 natively (AVX512-BF16 or AMX; ARM's BF16 extension), where bf16 halves
        the bytes read per token at no cost in arithmetic. Elsewhere bf16 is emulated and slower than fp32."""
        return bool(BF16_FLAGS & self.cpu_features)

    def free(self, device: str) -> int:
        """Free bytes on `device` ("ram" or "cuda:N"); 0 for a device this machine does not have."""
        if device == "ram":
            return self.ram_available
        if device == "mps":
            return self.mps.free if self.mps is not None else 0
        return next((gpu.free for gpu in self.gpus if gpu.device == device), 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "ram_total": self.ram_total,
            "ram_available": self.ram_available,
            "gpus": [{"index": g.index, "name": g.name, "total": g.total, "free": g.free, "uuid": g.uuid}
                     for g in self.gpus],
            "mps": None if self.mps is None else {"name": self.mps.name, "total": self.mps.total,
                                                  "free": self.mps.free},
            "cpu_bf16": self.cpu_bf16,
            "cpu_cores": self.cpu_cores,
        }  # fmt: skip


def fake(*, ram_gib: float = 32, gpu_gib: tuple[float, ...] = (), mps_gib: float | None = None,
         cpu_bf16: bool = False) -> Hardware:  # fmt: skip
    """A made-up machine (for tests and "what if" estimates): `gpu_gib` lists each GPU's free memory in GiB;
    `mps_gib`: an Apple GPU's budget; `cpu_bf16` gives its CPU the AVX512-BF16 flag."""
    gpus = tuple(GPU(i, f"fake {gib:g} GiB", int(gib * GIB), int(gib * GIB)) for i, gib in enumerate(gpu_gib))
    mps = None if mps_gib is None else GPU(0, "fake Apple GPU", int(mps_gib * GIB), int(mps_gib * GIB), kind="mps")
    features = frozenset({"avx2", "avx512f", "avx512_bf16"} if cpu_bf16 else {"avx2"})
    return Hardware(ram_total=int(ram_gib * GIB), ram_available=int(ram_gib * GIB), gpus=gpus, mps=mps,
                    cpu_features=features)


def snapshot() -> Hardware:
    """This machine now."""
    memory = psutil.virtual_memory()
    return Hardware(
        ram_total=memory.total,
        ram_available=memory.available,
        gpus=nvidia_gpus(),
        cpu_features=cpu_features(),
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        mps=apple_gpu(),
    )


def nvidia_gpus() -> tuple[GPU, ...]:
    """Every NVIDIA GPU CUDA can use, by CUDA ordinal, with its total and free memory; () without pynvml, a driver
    or a GPU."""
    devices = nvml_devices()
    if devices is None:
        return torch_cuda_gpus()
    if not devices:
        return ()
    return cuda_devices(devices, cuda_uuids(), os.environ)


def nvml_devices() -> list[NvmlDevice] | None:
    """Every GPU NVML knows; None without pynvml (then only CUDA itself can tell)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver / no device: the normal case on a CPU machine
        return []
    try:
        return [_nvml_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _nvml_device(pynvml, index: int) -> NvmlDevice:  # pynvml: the module, imported lazily
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    text = [v.decode() if isinstance(v, bytes) else v for v in (name, uuid)]
    return NvmlDevice(index, text[1], text[0], int(info.total), int(info.free))


def torch_cuda_gpus() -> tuple[GPU, ...]:
    """Without NVML: the GPUs as PyTorch's CUDA sees them, when PyTorch is already imported (asking creates a CUDA
    context on each GPU, a few hundred MB, so an import is not forced for this)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return ()
    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        props = torch.cuda.get_device_properties(index)
        gpus.append(GPU(index, props.name, int(total), int(free), f"GPU-{props.uuid}"))
    return tuple(gpus)


def cuda_devices(nvml: Sequence[NvmlDevice], uuids: Sequence[str] | None, env: Mapping[str, str]) -> tuple[GPU, ...]:
    """NVML's devices as CUDA numbers them: by the driver's UUIDs (`uuids`, CUDA ordinal order) when known, else by
    `CUDA_VISIBLE_DEVICES` (indices or UUID prefixes; CUDA stops at the first entry it cannot resolve) in NVML
    order. Devices CUDA cannot see, and MIG instances (no NVML memory of their own here), are left out."""
    if uuids is None:
        uuids = _visible_uuids(nvml, env.get("CUDA_VISIBLE_DEVICES"))
    by_uuid = {d.uuid.lower(): d for d in nvml}
    gpus = []
    for ordinal, uuid in enumerate(uuids):
        device = by_uuid.get(uuid.lower())
        if device is None:
            log.info("CUDA device %d (%s) has no NVML record (a MIG instance?): left out of the memory plan.",
                     ordinal, uuid)  # fmt: skip
            continue
        gpus.append(GPU(ordinal, device.name, device.total, device.free, device.uuid))
    return tuple(gpus)


def _visible_uuids(nvml: Sequence[NvmlDevice], visible: str | None) -> list[str]:
    if visible is None:
        return [d.uuid for d in nvml]
    uuids: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        match = [d for d in nvml if entry.isdigit() and d.nvml_index == int(entry)] or \
            [d for d in nvml if len(entry) > 4 and d.uuid.lower().startswith(_uuid_prefix(entry))]  # fmt: skip
        if len(match) != 1 or match[0].uuid in uuids:
            break  # CUDA ignores the rest of the list after an entry it cannot resolve
        uuids.append(match[0].uuid)
    return uuids


def _uuid_prefix(entry: str) -> str:
    entry = entry.lower()
    return entry if entry.startswith("gpu-") else "gpu-" + entry


def cuda_uuids() -> list[str] | None:
    """UUIDs of the devices CUDA can use, in CUDA ordinal order, from the driver API; None without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
    except OSError:
        return None
    count, uuids = ctypes.c_int(0), []
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    for ordinal in range(count.value):
        device, raw = ctypes.c_int(0), (ctypes.c_ubyte * 16)()
        if cuda.cuDeviceGet(ctypes.byref(device), ordinal) != 0 or cuda.cuDeviceGetUuid(raw, device) != 0:
            return None
        uuids.append(format_uuid(bytes(raw)))
    return uuids


def format_uuid(raw: bytes) -> str:
    """16 UUID bytes as NVML writes them: "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def apple_gpu() -> GPU | None:
    """Apple silicon's Metal device when PyTorch can use it: its budget is `recommended_max_memory` (what Metal
    lets one process keep resident), less what PyTorch already holds there."""
    if sys.platform != "darwin":
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.backends.mps.is_available():
        return None
    total = int(torch.mps.recommended_max_memory())
    free = max(total - int(torch.mps.driver_allocated_memory()), 0)
    return GPU(0, "Apple GPU (MPS)", total, free, kind="mps")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return frozenset(value.split())
    return frozenset()
