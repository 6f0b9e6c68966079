"""The packaged configs, loaded by name: ``prfdn train prfdn_jax.configs.smoke_x2`` (from any folder).

``smoke_x2``: a tiny x2 RFDN that trains in seconds on a CPU (also the default finetuning config of
``prfdn prune``); ``prfdn_x2`` / ``prfdn_x3``: the PRFDN recipes (``:tiny`` shrinks them for a CPU smoke
run); ``_recipe``: the stages both recipes share. :func:`prfdn_jax.config.load_config` imports no other
module by name (a config file is given by path).
"""
