"""The x2 recipe by path (``prfdn pipeline experiments/prfdn_x2.py[:tiny] ...``): it is packaged as
:mod:`prfdn_jax.configs.prfdn_x2` (``prfdn pipeline prfdn_jax.configs.prfdn_x2``, from any folder)."""

from prfdn_jax.configs.prfdn_x2 import get_config, tiny  # noqa: F401
