"""Optional dependencies: PyTorch and Torch-Pruning come with ``pip install 'prfdn-jax[torch]'``.

Upscaling, evaluation, model listing, training and the pipeline stages up to re-parametrization
need neither. Reading a ``.pth`` file, pruning and the PyTorch latency benchmark do:
:func:`require_torch` imports them or raises a one-line :class:`MissingExtra`.
"""

from __future__ import annotations

import importlib

INSTALL = "pip install 'prfdn-jax[torch]'"


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message is one line naming the install command."""


def require_torch(what: str, pruning: bool = False):
    """``torch`` (and ``torch_pruning`` when ``pruning``), or :class:`MissingExtra` naming ``what`` needs it."""
    for module, label in (("torch", "PyTorch"), ("torch_pruning", "Torch-Pruning"))[: 2 if pruning else 1]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(f"{what} needs {label}: {INSTALL}") from None
    return importlib.import_module("torch")
