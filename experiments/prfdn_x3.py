"""The x3 recipe by path (``prfdn pipeline experiments/prfdn_x3.py[:tiny] ...``): it is packaged as
:mod:`prfdn_jax.configs.prfdn_x3` (``prfdn pipeline prfdn_jax.configs.prfdn_x3``, from any folder)."""

from prfdn_jax.configs.prfdn_x3 import get_config, tiny  # noqa: F401
