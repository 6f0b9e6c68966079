"""Large images without --tile: `prfdn upscale` tiles them automatically and stays within its memory budget.

Before automatic tiling a 6000x4000 x2 upscale needed more than 18 GB (and 30 GB for 9000x9000). The
child's peak RSS is measured by a wrapper process (``RUSAGE_CHILDREN`` of a process whose only child is
``prfdn``), so nothing else this test session ran counts. 55-100 s on 2 CPU cores
(measured peak: 1.3 GB, in 416x416 tiles under the default 2 GB budget).
"""

import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

GB = 1e9

MEASURE = """
import resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "prfdn_jax.cli", *sys.argv[1:]], capture_output=True, text=True)
sys.stderr.write(p.stderr)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_6000x4000_x2_without_tile_stays_under_3_gb(tmp_path):
    src, dst = tmp_path / "big.png", tmp_path / "big_x2.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (4000, 6000, 3), np.uint8)).save(src, compress_level=1)
    p = subprocess.run([sys.executable, "-c", MEASURE, "upscale", str(src), "-o", str(dst)], capture_output=True,
                       text=True, timeout=1200)
    code, peak = map(int, p.stdout.split())
    assert code == 0, p.stderr
    assert peak < 3 * GB, f"peak RSS {peak / GB:.2f} GB"
    assert f"note: {src} is 6000x4000: upscaling in " in p.stderr and "tiles to stay within" in p.stderr, p.stderr
    print(f"peak RSS of prfdn upscale 6000x4000 x2: {peak / GB:.2f} GB")
    head = dst.read_bytes()[:24]  # PNG IHDR (Pillow would warn: 96 MP is over its decompression-bomb limit)
    assert head[12:16] == b"IHDR" and struct.unpack(">II", head[16:24]) == (12000, 8000)
