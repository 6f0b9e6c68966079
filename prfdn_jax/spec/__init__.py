"""The single source of PRFDN's topology, read by the JAX networks and by the PyTorch side alike.

Pure Python and NumPy (no jax, no torch):

* :mod:`~prfdn_jax.spec.topology`: conv geometry, layouts and depth (:func:`register_layout` adds one),
  forms, :class:`Arch`, standard RFDB/SRFDB/ESA widths, the merged form's widths, scale from the
  upsampler, the minimum image size;
* :mod:`~prfdn_jax.spec.couplings`: the channel-coupling checker (names the conv);
* :mod:`~prfdn_jax.spec.keys`: the released PyTorch key table and architecture detection;
* :mod:`~prfdn_jax.spec.perms`: branch-major permutations and block-diagonal helpers.
"""

from prfdn_jax.spec.couplings import block_errors, check_widths, describe, esa_errors, width_errors
from prfdn_jax.spec.keys import (TOP_KEYS, StateDictError, arch_from_state_dict, block_prefix, check_state_dict,
                                 conv_table, expected_shapes, fea_prefixes, is_stacked)
from prfdn_jax.spec.perms import block_diag, branch_columns, c5_columns, groupcat_perm, selector
from prfdn_jax.spec.topology import (ESA_CONVS, FORMS, GEOMETRY, LAYOUTS, LRELU_SLOPE, MIN_SIZE, Arch, Layout,
                                     Widths, block_steps, branch_layouts, default_arch, distilled_names, esa_widths,
                                     geometry, merged_widths, register_layout, rfdb_widths, scale_from_upsampler,
                                     unregister_layout)

__all__ = [
    "ESA_CONVS", "FORMS", "GEOMETRY", "LAYOUTS", "LRELU_SLOPE", "MIN_SIZE", "TOP_KEYS", "Arch", "Layout",
    "StateDictError", "Widths", "arch_from_state_dict", "block_diag", "block_errors", "block_prefix",
    "block_steps", "branch_columns", "branch_layouts", "c5_columns", "check_state_dict", "check_widths",
    "conv_table", "default_arch", "describe", "distilled_names", "esa_errors", "esa_widths", "expected_shapes",
    "fea_prefixes", "geometry", "groupcat_perm", "is_stacked", "merged_widths", "register_layout", "rfdb_widths",
    "scale_from_upsampler", "selector", "unregister_layout", "width_errors",
]
