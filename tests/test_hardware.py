"""loaders.hardware: the snapshot of this machine, and the faked machines the estimator's tests use."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from loaders import hardware


def test_snapshot_matches_this_machine() -> None:
    started = time.monotonic()
    hw = hardware.snapshot()
    assert time.monotonic() - started < 5  # no GPU / no driver must be quick, not a timeout
    assert hw.ram_total == psutil.virtual_memory().total
    assert 0 < hw.ram_available <= hw.ram_total
    assert hw.free("ram") == hw.ram_available
    assert hw.cpu_cores >= 1
    for gpu in hw.gpus:
        assert 0 <= gpu.free <= gpu.total
    assert hw.free("cuda:99") == 0


def test_cpu_features_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    flags = hardware.cpu_features(cpuinfo)
    assert {"avx2", "avx512_bf16"} <= flags
    assert hardware.Hardware(1, 1, cpu_features=flags).cpu_bf16
    assert not hardware.Hardware(1, 1, cpu_features=frozenset({"avx2"})).cpu_bf16
    assert hardware.Hardware(1, 1, cpu_features=frozenset({"amx_bf16"})).cpu_bf16  # AMX without AVX512-BF16
    assert hardware.cpu_features(tmp_path / "missing") == frozenset()


def test_this_cpu_flags_agree_with_proc() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ("avx512_bf16" in text) == ("avx512_bf16" in hardware.snapshot().cpu_features)


def test_fake_machine() -> None:
    assert hardware.fake(cpu_bf16=True).cpu_bf16 and not hardware.fake().cpu_bf16
    hw = hardware.fake(ram_gib=16, gpu_gib=(8, 24))
    assert [g.device for g in hw.gpus] == ["cuda:0", "cuda:1"]
    assert hw.free("cuda:1") == 24 * hardware.GIB
    assert hw.to_dict()["gpus"][0]["total"] == 8 * hardware.GIB
