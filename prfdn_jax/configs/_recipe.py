"""The PRFDN recipe shared by the x2 and x3 configs: RFDN -> branch net -> reparam -> pruning.

Stage 1: an RFDN (nf=50, 4 RFDBs) at the target scale. The only shipped RFDN is x4, so stage 1 starts
from its body (every tensor but the upsampler; init_strict=False) with a new random upsampler, and
trains all of it. Stage 2: the branch net made by branch_from_rfdn, Adam lr 1e-5 (the paper's rate when
starting from a trained RFDN). Stage 3: exact re-parametrization (no training). Stage 4: pruning of the
merged network to about the released model's size, finetuning at lr 1e-6 after every step.
"""

from prfdn_jax.data import shared_path
from prfdn_jax.config import PipelineConfig, TrainConfig

TRAIN_DIRS = tuple(str(shared_path("data", "train", d)) for d in ("T91", "BSD200", "General100", "BSDS500_test200"))
VAL_DIRS = (str(shared_path("data", "Set5", "HR")),)


def recipe(scale: int, layout: str, prune_ratio: float) -> PipelineConfig:
    def stage(**kw) -> TrainConfig:
        base = dict(scale=scale, data_dirs=TRAIN_DIRS, patch=64 * scale, batch=64, workers=4,
                    degradation="matlab", log_every=100, ckpt_every=5000, val_dirs=VAL_DIRS, val_every=5000,
                    keep=2)
        return TrainConfig(**{**base, **kw})

    return PipelineConfig(
        scale=scale, layout=layout,
        rfdn=stage(layout="rfdn", nf=50, n_blocks=4, init_weights=str(shared_path("weights", "rfdn_aim_x4.pth")),
                   init_strict=False, steps=100_000, lr=5e-4, schedule="cosine", warmup=1000),
        branch=stage(layout=layout, nf=50, steps=50_000, lr=1e-5, schedule="constant"),
        finetune=stage(layout=layout, nf=50, steps=5_000, lr=1e-6, schedule="constant", val_every=5000),
        prune_ratio=prune_ratio, prune_steps=8, prune_uniform=False, prune_importance="magnitude",
    )


def shrink(c: PipelineConfig) -> PipelineConfig:
    """Everything shrunk for a CPU smoke run: nf=8, random init, 1-2 steps per stage, 1 eval image per set."""
    small = dict(nf=8, init_weights=None, data_dirs=(), patch=48, batch=4, workers=0, log_every=1,
                 ckpt_every=1000, val_dirs=(), schedule="constant", warmup=0)
    return c.replace(
        rfdn=c.rfdn.replace(**small, steps=2, lr=5e-4),
        branch=c.branch.replace(**small, steps=1),
        finetune=c.finetune.replace(**small, steps=1),
        prune_ratio=0.25, prune_steps=1,
        eval_limit=1, eval_crop=128 * c.scale, latency_runs=2,
    )
