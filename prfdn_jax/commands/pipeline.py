"""``prfdn pipeline``: the four-stage PRFDN recipe (RFDN -> branch -> reparam -> prune) with a report."""

from __future__ import annotations

from prfdn_jax.commands.common import check_run_folders
from prfdn_jax.config import STAGES

HELP = "the four-stage PRFDN recipe with a report (RFDN -> branch -> reparam -> prune)"


def add_arguments(pl) -> None:
    pl.add_argument("config", help="pipeline config file (path.py[:function]) or packaged config "
                                   "(prfdn_jax.configs.prfdn_x2)")
    pl.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders (default: the config's)")
    pl.add_argument("--workdir", required=True,
                    help="run folder: one subfolder per stage, the report; resumes what it holds")
    pl.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders for the training stages")
    pl.add_argument("--stages", nargs="+", choices=STAGES,
                    help="stages to run (the stages they build on are run too, or reused from the workdir)")


def run(args) -> int:
    from prfdn_jax.config import ConfigError, PipelineConfig, load_config
    from prfdn_jax.pipeline import run_pipeline

    config = load_config(args.config)
    if not isinstance(config, PipelineConfig):
        raise ConfigError(f"{args.config}: not a pipeline config (use prfdn train for a TrainConfig)")
    if args.stages:
        config = config.replace(stages=tuple(args.stages))
    check_run_folders(args)
    run_pipeline(config, args.data, args.workdir, val_dirs=args.val)
    return 0
