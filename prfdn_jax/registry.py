"""Built-in models: one registry of names -> architecture, scale, weights file, provenance.

The weights live inside the package (``prfdn_jax/weights/*.safetensors``, our non-pickle format),
converted from the released PyTorch checkpoints by ``python -m experiments.ship_weights``; see
``prfdn_jax/weights/README.md`` for provenance and licences.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    scale: int
    file: str             # in prfdn_jax/weights/
    architecture: str     # human-readable
    source: str           # released checkpoint it was converted from
    licence: str
    psnr_y: dict          # reference Y-PSNR (MATLAB-bicubic LR) {set: dB}

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


MODELS: dict[str, ModelInfo] = {m.name: m for m in [
    ModelInfo("prfdn-x2", 2, "prfdn_x2.safetensors", "PRFDN x2, merged + pruned (B4S layout, dense)",
              "prfdn_x2_pruned.pth: PRFDN team, NTIRE 2023 RTSR submission", "MIT",
              {"Set5": 36.64, "Set14": 32.47}),
    ModelInfo("prfdn-x3", 3, "prfdn_x3.safetensors", "PRFDN x3, merged + pruned (B2S layout, dense)",
              "prfdn_x3_pruned.pth: PRFDN team, NTIRE 2023 RTSR submission", "MIT",
              {"Set5": 33.46, "Set14": 29.79}),
    ModelInfo("prfdn-x4", 4, "prfdn_x4.safetensors",
              "PRFDN x4 made by prfdn-jax: the released B2 x4 re-parametrized, pruned (Taylor, ESA kept whole) to "
              "58.2 GMAC at 540x960, finetuned with EMA, then a squared-error cosine finetune (wide, grouped)",
              "rfdnb2_branch_x4.pth via experiments/prfdn_x4.py (see prfdn_jax/weights/README.md)", "MIT",
              {"Set5": 31.56, "Set14": 28.15, "Urban100": 24.72}),
    ModelInfo("rfdn-x4", 4, "rfdn_x4.safetensors", "RFDN nf=50, 4 RFDBs (AIM 2020 release)",
              "rfdn_aim_x4.pth: RFDN authors' AIM 2020 release", "MIT (as vendored in NTIRE23-RTSR)",
              {"Set5": 32.16, "Set14": 28.65}),
]}

DEFAULT_MODEL = "prfdn-x2"
DEFAULT_BY_SCALE = {2: "prfdn-x2", 3: "prfdn-x3", 4: "prfdn-x4"}  # rfdn-x4 stays available by name


class UnknownModelError(ValueError):
    pass


def info(name: str) -> ModelInfo:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; built-in models: {', '.join(MODELS)}") from None


def for_scale(scale: int | None) -> str:
    """The built-in model name for ``scale`` (``prfdn-x2`` when no scale is given)."""
    if scale is None:
        return DEFAULT_MODEL
    if scale not in DEFAULT_BY_SCALE:
        raise UnknownModelError(f"no built-in model for x{scale}; built-in scales: "
                                f"{', '.join(str(s) for s in sorted(DEFAULT_BY_SCALE))}")
    return DEFAULT_BY_SCALE[scale]


def load(name: str) -> nnx.Module:
    from prfdn_jax.checkpoint import load_model_file

    return load_model_file(info(name).path)
