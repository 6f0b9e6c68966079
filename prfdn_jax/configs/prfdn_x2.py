"""PRFDN x2 recipe (NTIRE 2023 RTSR track 1): RFDN -> B4S branch net -> reparam -> pruning.

Pruning: ratio 0.88 of the merged channels keeps ~1.4 % of its 2.2 M parameters; the release has
29,851. The stages are in prfdn_jax/configs/_recipe.py.

    prfdn pipeline prfdn_jax.configs.prfdn_x2 --data <HR dirs> --workdir runs/prfdn_x2
    prfdn pipeline prfdn_jax.configs.prfdn_x2:tiny ...     # CPU smoke (seconds per stage)
"""

from prfdn_jax.config import PipelineConfig
from prfdn_jax.configs._recipe import recipe, shrink


def get_config() -> PipelineConfig:
    return recipe(scale=2, layout="b4s", prune_ratio=0.88)


def tiny() -> PipelineConfig:
    return shrink(get_config())
