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


# --- NVML devices as CUDA numbers them, Apple's GPU -------------------------------------------------------------------

NVML = [hardware.NvmlDevice(i, f"GPU-{c * 8}-1111-2222-3333-444444444444", f"card {c}", (i + 1) * hardware.GIB,
                            hardware.GIB // 2) for i, c in enumerate("abc")]  # fmt: skip


def test_cuda_ordinals_come_from_the_driver_uuids() -> None:
    # CUDA_VISIBLE_DEVICES=2,0 (or fastest-first order): cuda:0 is NVML's device 2, cuda:1 its device 0
    gpus = hardware.cuda_devices(NVML, [NVML[2].uuid.upper(), NVML[0].uuid], {"CUDA_VISIBLE_DEVICES": "ignored"})
    assert [(g.index, g.name, g.total, g.uuid) for g in gpus] == [
        (0, "card c", 3 * hardware.GIB, NVML[2].uuid), (1, "card a", hardware.GIB, NVML[0].uuid)]
    assert [g.device for g in gpus] == ["cuda:0", "cuda:1"]
    mig = hardware.cuda_devices(NVML, ["MIG-0f0f0f0f-1111-2222-3333-444444444444", NVML[1].uuid], {})
    assert [(g.index, g.name) for g in mig] == [(1, "card b")]  # the MIG instance has no NVML memory record here


def test_cuda_visible_devices_read_as_cuda_reads_it() -> None:
    def names(visible: str | None) -> list[str]:
        env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
        return [f"{g.index}:{g.name}" for g in hardware.cuda_devices(NVML, None, env)]

    assert names(None) == ["0:card a", "1:card b", "2:card c"]
    assert names("2,0") == ["0:card c", "1:card a"]
    assert names("GPU-bbbb") == ["0:card b"]  # a UUID prefix
    assert names("cccccccc-1111") == ["0:card c"]  # without "GPU-"
    assert names("1,7,2") == ["0:card b"]  # CUDA stops at the first entry it cannot resolve
    assert names("") == [] and names("-1") == []


def test_uuid_bytes_formatted_as_nvml_writes_them() -> None:
    raw = bytes(range(16))
    assert hardware.format_uuid(raw) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    uuids = hardware.cuda_uuids()  # None without a CUDA driver
    assert uuids is None or all(u.startswith("GPU-") and len(u) == 40 for u in uuids)


def test_apple_gpu_is_planned_for_the_torch_loaders_only(smollm2_hf: Path, smollm2_gguf: Path) -> None:
    from loaders.files import read_model_files
    from loaders.plan import plan_load
    from loaders.settings import NativeGGUFSettings, TransformersSettings
    from webui.estimate.local import estimate_plan

    mac = hardware.fake(ram_gib=16, mps_gib=10)
    assert mac.free("mps") == 10 * hardware.GIB and hardware.fake().mps is None
    assert hardware.apple_gpu() is None or hardware.apple_gpu().device == "mps"
    plan = plan_load("transformers", read_model_files(smollm2_hf), TransformersSettings(), mac)
    assert (plan.device, plan.dtype, plan.gpu_device) == ("mps", "float16", "mps")
    est = estimate_plan(plan)
    assert est.parts["mps"]["weights"] > 0 and est.vram > 0 and est.fit(mac).devices["mps"][1] == 10 * hardware.GIB
    assert plan_load("transformers", read_model_files(smollm2_hf), TransformersSettings(device="cpu"), mac).device \
        == "cpu"  # fmt: skip
    gguf = read_model_files(smollm2_gguf)  # the native GGUF loader splits layers between CUDA and the CPU only
    assert plan_load("gguf", gguf, NativeGGUFSettings(n_gpu_layers=99), mac).device == "cpu"
