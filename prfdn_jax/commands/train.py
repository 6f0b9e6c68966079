"""``prfdn train``: train (or resume) one network from a config, in a workdir.

A pipeline config trains one of its stages (``--stage``); ``--set KEY=VALUE`` overrides config fields,
each value checked against its field's type (:func:`prfdn_jax.config.override`).
"""

from __future__ import annotations

from pathlib import Path

from prfdn_jax.commands.common import CLIError, check_run_folders
from prfdn_jax.fileio import no_such

HELP = "train (or resume) a network from a config (see experiments/)"


def add_arguments(t) -> None:
    t.add_argument("config", help="config file (path.py[:function]) or packaged config (prfdn_jax.configs.NAME)")
    t.add_argument("--workdir", required=True, help="run folder; resumes from its latest checkpoint")
    t.add_argument("--data", nargs="+", metavar="DIR", help="HR training image folders")
    t.add_argument("--val", nargs="+", metavar="DIR", help="HR validation folders (LR: MATLAB bicubic)")
    t.add_argument("--steps", type=int, help="total steps (overrides the config)")
    t.add_argument("--stage", help="for a pipeline config: the stage to train (rfdn, branch, finetune)")
    t.add_argument("--init", metavar="PATH", help="start from these weights (.pth, .safetensors, workdir)")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config fields")


def run(args) -> int:
    from prfdn_jax.config import ConfigError, TrainConfig, load_config, override

    config = load_config(args.config)
    if not isinstance(config, TrainConfig):
        stages = getattr(config, "train_stages", ())
        if args.stage not in stages:
            raise ConfigError(f"{args.config} is a pipeline config: pass --stage {{{','.join(stages)}}}")
        config = getattr(config, args.stage)
    elif args.stage:
        raise CLIError(f"--stage is for pipeline configs; {args.config} is a training config")
    if args.set:
        config = override(config, args.set)
    if args.steps is not None and args.steps < 0:
        raise CLIError(f"--steps must be >= 0, got {args.steps}")
    if args.init:
        if not Path(args.init).exists():
            raise CLIError(f"--init {args.init}: {no_such(args.init)}")
        config = config.replace(init_weights=args.init)
    check_run_folders(args)
    return train_until_stopped(config, args)


def train_until_stopped(config, args) -> int:
    """``train`` with SIGTERM and Ctrl-C as stop requests: the run checkpoints its last completed step and
    ends with one line, exit status 128 + the signal (143 SIGTERM, 130 Ctrl-C). A second Ctrl-C: at once."""
    import sys

    from prfdn_jax.train import TrainingStopped, stop_on_signals, train

    try:
        with stop_on_signals():
            train(config, args.workdir, data_dirs=args.data, steps=args.steps, val_dirs=args.val)
    except TrainingStopped as e:
        print(f"prfdn: {e}{'; resume with the same --workdir' if e.saved is not None else ''}", file=sys.stderr,
              flush=True)
        return 128 + e.signum
    return 0
