"""The one-shot GPU measurement script of the deploy compiler runs end to end (CPU smoke profile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_inference_script_cpu_smoke(tmp_path):
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_inference.py"), "--cpu-smoke",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["versions"]["jax"] and res["profile"] == "cpu_smoke"
    for key in ("x2", "x3", "batch"):
        assert res[key]["jax_ms"] > 0 and res[key]["torch_ms"] > 0
    assert "jax_network" in res["x2"] and res["batch"]["batch"] == 2
    assert set(res["dtypes"]) == {"float16", "bfloat16", "float32"}
    assert len(res["rewrites"]) == 4 and res["runtime_fusion"]["jax_ms"] > 0
    assert res["program"]["transposes"] == 0
    assert "## rewrites" in (tmp_path / "results.md").read_text()
