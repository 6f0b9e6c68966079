"""Optional dependencies: PyTorch and Torch-Pruning come with ``pip install 'prfdn-jax[torch]'``, ONNX and
ONNX Runtime with ``[onnx]``, PyAV with ``[video]``.

Upscaling, evaluation, model listing, training and the pipeline stages up to re-parametrization
need none of them. Reading a ``.pth`` file, pruning and the PyTorch latency benchmark need torch:
:func:`require_torch` imports it or raises a one-line :class:`MissingExtra`; :func:`require_module`
does the same for the other extras.
"""

from __future__ import annotations

import importlib

INSTALL = "pip install 'prfdn-jax[torch]'"
# optional module -> (what it is called in messages, the extra that brings it)
EXTRAS = {"onnx": ("ONNX", "onnx"), "onnxruntime": ("ONNX Runtime", "onnx"), "av": ("PyAV", "video")}


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


def require_module(name: str, what: str):
    """Import the optional module ``name`` or raise :class:`MissingExtra` naming the extra that brings it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        label, extra = EXTRAS.get(name, (name, name))
        raise MissingExtra(f"{what} needs {label}: pip install 'prfdn-jax[{extra}]'") from None
