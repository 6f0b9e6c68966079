"""Without PyTorch (the optional ``torch`` extra): what works, and one-line errors for what needs it.

Each case runs ``prfdn`` in a fresh process where ``import torch`` / ``import torch_pruning`` fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, shared_path

SCRIPT = ("import sys; sys.modules['torch'] = None; sys.modules['torch_pruning'] = None; "
          "from prfdn_jax.cli import main; rc = main(sys.argv[1:]); "
          "assert sys.modules['torch'] is None, 'torch was imported'; sys.exit(rc)")
INSTALL = "pip install 'prfdn-jax[torch]'"


def prfdn_without_torch(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def assert_needs_torch(p: subprocess.CompletedProcess, *fragments):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0].startswith("prfdn: error: ") and "needs PyTorch" in lines[0] and INSTALL in lines[0], lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]


def test_upscale_works(tmp_path):
    out = tmp_path / "out.png"
    p = prfdn_without_torch("upscale", ROOT / "examples" / "butterfly_lr.png", "-o", out)
    assert p.returncode == 0, p.stderr
    assert Image.open(out).size == (256, 256)


@pytest.mark.slow
def test_eval_works():
    p = prfdn_without_torch("eval", "--model", "prfdn-x2", "--data", shared_path("data", "Set5"), "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["images"] == 5 and abs(res["psnr_y"] - 36.64) <= 0.01


def test_prune_is_one_line_naming_the_extra(tmp_path):
    dst = tmp_path / "p.safetensors"
    p = prfdn_without_torch("prune", tmp_path / "src.safetensors", dst, "--ratio", 0.5)
    assert_needs_torch(p, "prfdn prune")
    assert not dst.exists()


def test_pth_weights_and_torch_bench_need_torch(tmp_path):
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"PK\x03\x04 not really a checkpoint")
    assert_needs_torch(prfdn_without_torch("models", "--weights", pth), "w.pth")
    assert_needs_torch(prfdn_without_torch("bench", "--model", "prfdn-x2", "--backend", "torch"), "prfdn bench")
