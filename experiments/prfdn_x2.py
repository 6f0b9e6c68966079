"""PRFDN x2 recipe (NTIRE 2023 RTSR track 1): RFDN -> B4S branch net -> reparam -> pruning.

Stage 1: an x2 RFDN (nf=50, 4 RFDBs). The only shipped RFDN is x4, so stage 1 starts from its body
(every tensor but the upsampler; init_strict=False) with a new random x2 upsampler, and trains all of it.
Stage 2: B4S made by branch_from_rfdn, Adam lr 1e-5 (the paper's rate when starting from a trained RFDN).
Stage 3: exact re-parametrization (no training). Stage 4: pruning to about the released model's size
(ratio 0.88 of the merged channels keeps ~1.4 % of its 2.2 M parameters; the release has 29,851),
finetuning at lr 1e-6 after every step.

    python -m prfdn_jax.pipeline experiments/prfdn_x2.py --data <HR dirs> --workdir runs/prfdn_x2
    python -m prfdn_jax.pipeline experiments/prfdn_x2.py:tiny ...     # CPU smoke (seconds per stage)
"""

from prfdn_jax.data import shared_path
from prfdn_jax.pipeline import PipelineConfig
from prfdn_jax.train import TrainConfig

SCALE = 2
LAYOUT = "b4s"
TRAIN_DIRS = tuple(str(shared_path("data", "train", d)) for d in ("T91", "BSD200", "General100", "BSDS500_test200"))
VAL_DIRS = (str(shared_path("data", "Set5", "HR")),)


def _stage(**kw) -> TrainConfig:
    base = dict(scale=SCALE, data_dirs=TRAIN_DIRS, patch=64 * SCALE, batch=64, workers=4, degradation="matlab",
                log_every=100, ckpt_every=5000, val_dirs=VAL_DIRS, val_every=5000, keep=2)
    base.update(kw)
    return TrainConfig(**base)


def get_config() -> PipelineConfig:
    return PipelineConfig(
        scale=SCALE, layout=LAYOUT,
        rfdn=_stage(layout="rfdn", nf=50, n_blocks=4, init_weights=str(shared_path("weights", "rfdn_aim_x4.pth")),
                    init_strict=False, steps=100_000, lr=5e-4, schedule="cosine", warmup=1000),
        branch=_stage(layout=LAYOUT, nf=50, steps=50_000, lr=1e-5, schedule="constant"),
        finetune=_stage(layout=LAYOUT, nf=50, steps=5_000, lr=1e-6, schedule="constant", val_every=5000),
        prune_ratio=0.88, prune_steps=8, prune_uniform=False, prune_importance="magnitude",
    )


def tiny() -> PipelineConfig:
    """Everything shrunk for a CPU smoke run: nf=8, random init, 1-2 steps per stage, 1 eval image per set."""
    small = dict(nf=8, init_weights=None, data_dirs=(), patch=48, batch=4, workers=0, log_every=1,
                 ckpt_every=1000, val_dirs=(), schedule="constant", warmup=0)
    c = get_config()
    return c.replace(
        rfdn=c.rfdn.replace(**small, steps=2, lr=5e-4),
        branch=c.branch.replace(**small, steps=1),
        finetune=c.finetune.replace(**small, steps=1),
        prune_ratio=0.25, prune_steps=1,
        eval_limit=1, eval_crop=128 * SCALE, latency_runs=2,
    )
