"""Convert the released PyTorch checkpoints into the package's built-in model files.

    python -m experiments.ship_weights [SHARED_WEIGHTS_DIR]

Each source file is checked against its SHA-256 (from ``SHA256SUMS`` beside it), loaded with
``weights_only=True``, converted by the one state-dict table and written as our safetensors model file
with its provenance in the metadata. The conversion is exact: the round trip back to PyTorch is
bit-identical (tested).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from prfdn_jax.checkpoint import load_torch, save_model
from prfdn_jax.registry import MODELS


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    src = Path(argv[0] if argv else os.environ.get("PRFDN_SHARED", "../shared") + "/weights")
    sums = dict(reversed(line.split()) for line in (src / "SHA256SUMS").read_text().splitlines() if line.strip())
    for info in MODELS.values():
        name = info.source.split(":")[0]
        data = (src / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if sums.get(name) != digest:
            print(f"error: {name}: SHA-256 {digest} does not match SHA256SUMS", file=sys.stderr)
            return 1
        model = load_torch(src / name)
        save_model(info.path, model, name=info.name, source=info.source, licence=info.licence,
                   source_sha256=digest)
        print(f"{info.name}: {name} ({digest[:12]}...) -> {info.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
