"""PRFDN x3 recipe (NTIRE 2023 RTSR track 2): RFDN -> B2S branch net -> reparam -> pruning.

Pruning: ratio 0.75 of the merged channels keeps ~6 % of its 0.98 M parameters; the release has
62,905. The stages are in prfdn_jax/configs/_recipe.py.

    prfdn pipeline prfdn_jax.configs.prfdn_x3 --data <HR dirs> --workdir runs/prfdn_x3
    prfdn pipeline prfdn_jax.configs.prfdn_x3:tiny ...     # CPU smoke (seconds per stage)
"""

from prfdn_jax.config import PipelineConfig
from prfdn_jax.configs._recipe import recipe, shrink


def get_config() -> PipelineConfig:
    return recipe(scale=3, layout="b2s", prune_ratio=0.75)


def tiny() -> PipelineConfig:
    return shrink(get_config())
