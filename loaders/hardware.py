"""What this machine has: total and available RAM, each NVIDIA GPU's total and free memory, and CPU features.

`snapshot()` reads it once into a frozen `Hardware` record. The estimator (`webui/estimate.py`) takes a `Hardware`
argument rather than asking the machine itself, so tests can hand it a faked 8 / 12 / 24 GB GPU.
No GPU, no NVIDIA driver or no `pynvml` all mean "no GPUs", quickly and without an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psutil

GIB = 1024**3
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # /proc/cpuinfo: x86 (AVX512-BF16, AMX), ARM (bf16)


@dataclass(frozen=True)
class GPU:
    """One CUDA device as NVML sees it; memory in bytes."""

    index: int
    name: str
    total: int
    free: int

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class Hardware:
    """RAM in bytes, the GPUs, and the CPU's feature flags (as in /proc/cpuinfo: avx2, avx512_bf16...)."""

    ram_total: int
    ram_available: int
    gpus: tuple[GPU, ...] = ()
    cpu_features: frozenset[str] = field(default_factory=frozenset)
    cpu_cores: int = 1

    @property
    def cpu_bf16(self) -> bool:
        """True when the CPU computes in bf16 natively (AVX512-BF16 or AMX; ARM's BF16 extension), where bf16 halves
        the bytes read per token at no cost in arithmetic. Elsewhere bf16 is emulated and slower than fp32."""
        return bool(BF16_FLAGS & self.cpu_features)

    def free(self, device: str) -> int:
        """Free bytes on `device` ("ram" or "cuda:N"); 0 for a device this machine does not have."""
        if device == "ram":
            return self.ram_available
        return next((gpu.free for gpu in self.gpus if gpu.device == device), 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "ram_total": self.ram_total,
            "ram_available": self.ram_available,
            "gpus": [{"index": g.index, "name": g.name, "total": g.total, "free": g.free} for g in self.gpus],
            "cpu_bf16": self.cpu_bf16,
            "cpu_cores": self.cpu_cores,
        }


def fake(*, ram_gib: float = 32, gpu_gib: tuple[float, ...] = (), cpu_bf16: bool = False) -> Hardware:
    """A made-up machine (for tests and "what if" estimates): `gpu_gib` lists each GPU's free memory in GiB;
    `cpu_bf16` gives its CPU the AVX512-BF16 flag."""
    gpus = tuple(GPU(i, f"fake {gib:g} GiB", int(gib * GIB), int(gib * GIB)) for i, gib in enumerate(gpu_gib))
    features = frozenset({"avx2", "avx512f", "avx512_bf16"} if cpu_bf16 else {"avx2"})
    return Hardware(ram_total=int(ram_gib * GIB), ram_available=int(ram_gib * GIB), gpus=gpus, cpu_features=features)


def snapshot() -> Hardware:
    """This machine now."""
    memory = psutil.virtual_memory()
    return Hardware(
        ram_total=memory.total,
        ram_available=memory.available,
        gpus=nvidia_gpus(),
        cpu_features=cpu_features(),
        cpu_cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
    )


def nvidia_gpus() -> tuple[GPU, ...]:
    """Every NVIDIA GPU with its total and free memory; () without pynvml, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver / no device: the normal case on a CPU machine
        return ()
    try:
        return tuple(_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    finally:
        pynvml.nvmlShutdown()


def _gpu(pynvml, index: int) -> GPU:  # pynvml: the module, imported lazily
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return GPU(index, name.decode() if isinstance(name, bytes) else name, int(info.total), int(info.free))


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
