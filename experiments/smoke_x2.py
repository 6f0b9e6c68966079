"""The smoke config by path (``prfdn train experiments/smoke_x2.py ...``): it is packaged as
:mod:`prfdn_jax.configs.smoke_x2` (``prfdn train prfdn_jax.configs.smoke_x2``, from any folder)."""

from prfdn_jax.configs.smoke_x2 import get_config  # noqa: F401
