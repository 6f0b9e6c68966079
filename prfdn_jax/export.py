"""``prfdn export``: a network as a PyTorch state dict, an ONNX model or our safetensors model file.

:func:`export` writes atomically (:func:`prfdn_jax.fileio.atomic_write`): a failure leaves no partial
file. Formats (:data:`FORMATS`):

Value range: like the released weights, an exported network takes RGB in [0, 255] and returns [0, 255]
(not clamped or rounded). ``value_range="01"`` (``prfdn export --range 01``, torch and onnx) writes a
network that takes and returns [0, 1] instead: :func:`for_range` folds the ``/ 255`` of the input into
the first conv (``fea``: its kernel times 255) and the ``* 255`` of the output into the last conv before
the PixelShuffle (``upsampler``: kernel and bias / 255), exact up to float32 rounding; the PixelShuffle
only moves values, and nothing adds the input to the output.

* ``torch``: a plain state dict of float32 tensors (``torch.save``), loadable with
  ``torch.load(path, weights_only=True)`` into :func:`converters.torch_modules.build_from_state_dict`.
  Merged / branch / RFDN networks keep the released key names (a built-in model gives back exactly
  the released checkpoint); wide networks are written as the grouped convs of the reference
  ``WideNet`` (:mod:`converters.export_torch`). Needs the ``torch`` extra.
* ``onnx``: float32 ONNX, opset 17, input ``input`` ``(batch, 3, height, width)`` RGB in [0, 255]
  (NCHW), output ``output`` ``(batch, 3, scale*height, scale*width)`` in [0, 255], not clamped or
  rounded (with ``value_range="01"``: [0, 1]; the model's ``input_range`` property says which);
  batch, height and width are dynamic. Needs the ``onnx`` extra.
* ``safetensors``: our model file (:func:`prfdn_jax.checkpoint.save_model`).

The ONNX route: the graph is written straight from the deployed program (:mod:`prfdn_jax.deploy`,
CPU rewrites: the network merged exactly and its 1x1 convs folded), one standard ONNX op per program
op (Conv, LeakyRelu, Relu, Sigmoid, Add, Mul, Concat, Slice, MaxPool, Resize, DepthToSpace). Why not
the two usual routes:

* ``torch.onnx.export`` of the PyTorch reference: PyTorch 2.13's default (dynamo) exporter needs
  ``onnxscript``, one more dependency; the TorchScript exporter (``dynamo=False``) works but warns
  that it will be removed, takes 2-5 s and records the reference's layers unmerged (prfdn-x2: 35
  convs plus 40 Shape/Gather/Unsqueeze/Cast/Constant ops for ESA's dynamic resize; rfdn-x4 64 convs).
* ``jax2onnx``: one more dependency, and it would convert the traced jaxpr, shapes baked in.

The program is the network JAX runs, so ONNX and JAX compute the same ops in the same order (within
1e-3 on [0, 255], checked in onnxruntime at two sizes with one file); it needs neither torch nor jax
tracing, and the dynamic-shape traps cannot occur: PixelShuffle is one ``DepthToSpace`` (mode CRD =
PyTorch's channel order), and ESA's resize takes its ``sizes`` from the ``Shape`` of the tensor it
matches (``Resize`` linear, ``half_pixel``: PyTorch's ``align_corners=False``), never a constant.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prfdn_jax.extras import require_module, require_torch
from prfdn_jax.fileio import atomic_write

__all__ = ["FORMATS", "ONNX_OPSET", "RANGES", "ExportError", "export", "export_onnx", "for_range", "onnx_model",
           "run_onnx"]

FORMATS = ("torch", "onnx", "safetensors")
RANGES = ("255", "01")  # the value range of an exported network's input and output: [0, 255] or [0, 1]
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR of opset 17: loadable by onnxruntime >= 1.12


class ExportError(ValueError):
    """The network cannot be exported in that format, or the output cannot be written (one line)."""


def _write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` inside :func:`~prfdn_jax.fileio.atomic_write` of ``path``: on any error ``path`` is
    left as it was. ExportError when ``path`` is a folder or no file can be created beside it."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path}: is a directory")
    tmp = None
    try:
        with atomic_write(path) as tmp:
            write(tmp)
    except OSError as e:
        if tmp is None:  # the temp file could not be created
            raise ExportError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return path


def for_range(model, value_range: str = "255"):
    """``model`` itself (``'255'``), or a copy that takes and returns [0, 1] (``'01'``): the input's
    ``/ 255`` folded into ``fea`` (the only conv that reads the input, in every form), the output's
    ``* 255`` into ``upsampler`` (the last conv; the PixelShuffle after it only moves values)."""
    from prfdn_jax.checkpoint import flat_params, model_from_flat

    if value_range not in RANGES:
        raise ExportError(f"unknown value range {value_range!r}; choose from {', '.join(RANGES)}")
    if value_range == "255":
        return model
    flat, k = flat_params(model), np.float32(255)
    flat["fea.kernel"] = flat["fea.kernel"] * k
    flat["upsampler.kernel"], flat["upsampler.bias"] = flat["upsampler.kernel"] / k, flat["upsampler.bias"] / k
    return model_from_flat(model.arch, flat)


def export(model, fmt: str, out_path: str | os.PathLike, value_range: str = "255") -> Path:
    """Write ``model`` to ``out_path`` in format ``fmt`` (one of :data:`FORMATS`), taking and returning
    ``value_range`` (:data:`RANGES`; ``'01'``: torch and onnx only); returns the path. The network is run
    on a test image first: an output holding NaN or Inf raises
    :class:`~prfdn_jax.inference.NonFiniteOutput` and nothing is written."""
    from prfdn_jax.checkpoint import flat_params, write_model_file
    from prfdn_jax.deploy import deploy
    from prfdn_jax.inference import NonFiniteOutput, check_network

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "safetensors" and value_range != "255":
        raise ExportError("--range 01 is for torch and onnx exports: a prfdn .safetensors model takes [0, 255]")
    try:
        check_network(deploy(model))
    except NonFiniteOutput as e:
        raise NonFiniteOutput(f"{e}; {out_path} not written") from None
    model = for_range(model, value_range)
    if fmt == "safetensors":
        return _write(out_path, lambda tmp: write_model_file(tmp, model))
    if fmt == "onnx":
        return export_onnx(model, out_path, value_range=value_range)
    require_torch("prfdn export --format torch")
    from converters.export_torch import TorchExportError, save_state_dict

    try:
        return _write(out_path, lambda tmp: save_state_dict(flat_params(model), model.arch, tmp))
    except TorchExportError as e:
        raise ExportError(str(e)) from None


# ----------------------------------------------------------------------------- ONNX
def onnx_model(model, opset: int = ONNX_OPSET, value_range: str = "255"):
    """The ``onnx.ModelProto`` of ``model`` (see the module doc), checked with ``onnx.checker``.
    ``value_range``: what its doc string and ``input_range`` property say (the weights are ``model``'s:
    :func:`for_range` folds the scaling)."""
    onnx = require_module("onnx", "ONNX export")
    from onnx import TensorProto, helper, numpy_helper

    from prfdn_jax.deploy import deploy
    from prfdn_jax.deploy.graph import Act, Add, Concat, Conv, MaxPool, Mul, PixelShuffle, Resize, Slice
    from prfdn_jax.spec import LRELU_SLOPE

    if opset < 17:
        raise ExportError(f"ONNX opset {opset}: need 17 or newer")
    prog = deploy(model, backend="cpu", dtype="float32").program
    names = {prog.inp: "input", prog.out: "output"}
    nodes, inits = [], []
    taken = set(names.values()) | {op.out for op in prog.ops}

    def v(name: str) -> str:
        return names.get(name, name)

    def const(base: str, value: np.ndarray) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(kind: str, inputs, out: str, **attrs):
        nodes.append(helper.make_node(kind, [v(i) if i else "" for i in inputs], [v(out)], name=out, **attrs))

    for op in prog.ops:
        if isinstance(op, Conv):
            w = const(op.out + ".weight", np.asarray(op.kernel, np.float32).transpose(3, 2, 0, 1))
            b = const(op.out + ".bias", np.asarray(op.bias, np.float32))
            nodes.append(helper.make_node("Conv", [v(op.src), w, b], [v(op.out)], name=op.out,
                                          kernel_shape=[op.k, op.k], strides=[op.stride] * 2, pads=[op.pad] * 4,
                                          group=op.groups))
        elif isinstance(op, Act):
            kind = {"lrelu": "LeakyRelu", "relu": "Relu", "sigmoid": "Sigmoid"}[op.kind]
            node(kind, [op.src], op.out, **({"alpha": LRELU_SLOPE} if op.kind == "lrelu" else {}))
        elif isinstance(op, (Add, Mul)):
            node(type(op).__name__, [op.a, op.b], op.out)
        elif isinstance(op, Concat):
            node("Concat", list(op.srcs), op.out, axis=1)
        elif isinstance(op, Slice):
            ends = [const(op.out + f".{k}", np.array([x], np.int64))
                    for k, x in (("starts", op.start), ("ends", op.stop), ("axes", 1))]
            nodes.append(helper.make_node("Slice", [v(op.src), *ends], [v(op.out)], name=op.out))
        elif isinstance(op, MaxPool):
            node("MaxPool", [op.src], op.out, kernel_shape=[op.window] * 2, strides=[op.stride] * 2)
        elif isinstance(op, Resize):  # sizes = (N, C) of src, (H, W) of like: dynamic
            nc, hw, sizes = op.out + ".nc", op.out + ".hw", op.out + ".sizes"
            nodes += [helper.make_node("Shape", [v(op.src)], [nc], name=nc, end=2),
                      helper.make_node("Shape", [v(op.like)], [hw], name=hw, start=2),
                      helper.make_node("Concat", [nc, hw], [sizes], name=sizes, axis=0)]
            nodes.append(helper.make_node("Resize", [v(op.src), "", "", sizes], [v(op.out)], name=op.out,
                                          mode="linear", coordinate_transformation_mode="half_pixel"))
        elif isinstance(op, PixelShuffle):
            node("DepthToSpace", [op.src], op.out, blocksize=op.r, mode="CRD")
        else:  # pragma: no cover - every op kind of the deploy IR is handled above
            raise ExportError(f"no ONNX translation for the program op {type(op).__name__}")
    r, vr = prog.scale, "[0, 1]" if value_range == "01" else "[0, 255]"
    graph = helper.make_graph(
        nodes, f"prfdn_x{r}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, f"{r}*height", f"{r}*width"])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="prfdn-jax",
                          doc_string=f"x{r} super-resolution: input (batch, 3, H, W) RGB float in {vr} -> "
                                     f"output (batch, 3, {r}H, {r}W) in {vr}, not clamped")
    m.ir_version = ONNX_IR_VERSION
    helper.set_model_props(m, {"prfdn-jax.arch": model.arch.to_json(), "scale": str(r),
                               "input_range": "0-1" if value_range == "01" else "0-255",
                               "layout": "NCHW RGB"})
    onnx.checker.check_model(m, full_check=True)
    return m


def export_onnx(model, out_path: str | os.PathLike, opset: int = ONNX_OPSET, value_range: str = "255") -> Path:
    """Write :func:`onnx_model` of ``model`` to ``out_path`` atomically."""
    m = onnx_model(model, opset, value_range)
    return _write(out_path, lambda tmp: tmp.write_bytes(m.SerializeToString()))


def run_onnx(path: str | os.PathLike, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an exported ONNX file in onnxruntime (CPU): ``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)``."""
    ort = require_module("onnxruntime", "running an ONNX model")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0]})") from None
    x = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))
    name = sess.get_inputs()[0].name
    try:
        y = sess.run(None, {name: x})[0]
    except Exception as e:  # noqa: BLE001 - e.g. a model that does not take (B, 3, H, W) images
        raise ExportError(f"{path}: cannot run on a {x.shape} input ({str(e).strip().splitlines()[0]})") from None
    return y.transpose(0, 2, 3, 1)
