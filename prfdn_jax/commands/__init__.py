"""The ``prfdn`` commands, one module each: ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status; bad input raises a one-line error, see :mod:`prfdn_jax.cli`).

Every option is checked before slow work starts; heavy modules are imported inside ``run``. Shared
helpers (model options, output checks, messages, automatic tiles): :mod:`prfdn_jax.commands.common`.
"""
