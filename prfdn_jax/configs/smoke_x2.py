"""Smoke config: a tiny x2 RFDN (nf=8, one RFDB) that trains in seconds on a CPU.

    prfdn train prfdn_jax.configs.smoke_x2 --workdir runs/smoke --steps 20
"""

from prfdn_jax.data import shared_path
from prfdn_jax.config import TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        layout="rfdn", nf=8, n_blocks=1, scale=2,
        data_dirs=(str(shared_path("data", "train", "T91")),),
        patch=48, batch=4, workers=0, seed=0,
        steps=20, lr=5e-4, schedule="constant",
        log_every=1, ckpt_every=2, keep=2,
        val_dirs=(), val_every=10,
    )
