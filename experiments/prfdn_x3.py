"""PRFDN x3 recipe (NTIRE 2023 RTSR track 2): RFDN -> B2S branch net -> reparam -> pruning.

Pruning: ratio 0.75 of the merged channels keeps ~6 % of its 0.98 M parameters; the release has 62,905. The stages are in experiments/prfdn_recipe.py.

    prfdn pipeline experiments/prfdn_x3.py --data <HR dirs> --workdir runs/prfdn_x3
    prfdn pipeline experiments/prfdn_x3.py:tiny ...     # CPU smoke (seconds per stage)
"""

from experiments.prfdn_recipe import recipe, shrink
from prfdn_jax.config import PipelineConfig


def get_config() -> PipelineConfig:
    return recipe(scale=3, layout="b2s", prune_ratio=0.75)


def tiny() -> PipelineConfig:
    return shrink(get_config())
