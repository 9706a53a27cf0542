"""benchmarks/gpu.sh end to end on the CPU (--quick): every step runs and both report files are written."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 100 s: a check of the benchmark script (run it before measuring on a GPU), not of the product
def test_gpu_report_runs_on_cpu(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert set(report["throughput"]) == {f"quick {p} 32 {b}" for p in ("float32", "bf16") for b in ("torch", "jax")}
    for result in report["throughput"].values():
        for config, kinds in result["times"].items():  # the folded inference models have no training step
            assert len(kinds.get("train", [])) == (0 if "folded" in config else 1) and kinds["infer"][0] > 0
    for epoch in report["training_epoch"].values():
        assert epoch["exit"] == 0 and epoch["training_s"] > 0
    table = (tmp_path / "gpu.md").read_text()
    assert "| 32 | keras/torch |" in table and "| 32 | keras/jax |" in table and "| keras_odir | 0 |" in table
