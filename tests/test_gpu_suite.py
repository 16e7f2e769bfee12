"""bench/gpu_suite.py cannot rot: its `--tiny` dry run (tiny shapes on the CPU, Triton kernels interpreted) runs every
section end to end and writes the Markdown section and the JSON a GPU session would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_dry_run_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_suite", "--tiny", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert results["copy_bandwidth"] > 0 and not results.get("skipped")
    checks = results["kernel_checks"]
    assert {c["kernel"].split()[0] for c in checks} == {"GPTQ", "GGUF"} and all(c["ok"] for c in checks)
    kernels = {b["kernel"] for b in results["kernel_bandwidth"]}
    assert {"fp16", "GPTQ 4-bit g128", "GGUF Q4_K", "GGUF Q4_1", "GGUF Q8_0"} <= kernels
    models = {m["row"]: m for m in results["models"]}
    assert list(models) == ["fp16 eager", "fp16 + CUDA graphs", "GPTQ 4-bit g128", "GGUF Q4_K",
                            "GPTQ 4-bit 32g act-order"]  # fmt: skip
    for row in ("fp16 eager", "GPTQ 4-bit g128", "GGUF Q4_K", "GPTQ 4-bit 32g act-order"):
        assert models[row]["decode_tps"] > 0 and models[row]["prefill_s"] > 0 and models[row]["limit_tps"] > 0
    assert [m["model"] for m in results["memory"]] == ["GPTQ 4-bit g128", "GGUF Q4_K"]
    assert all(m["estimated_full"] > 0 for m in results["memory"])
    text = (tmp_path / "gpu_suite.md").read_text()
    for heading in ("(a) Triton kernels", "(b) Matrix-vector bandwidth", "(c, d) Decode and prefill", "(e) Estimated"):
        assert f"### {heading}" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.json", "gpu_suite.md"]  # model files cleaned up
