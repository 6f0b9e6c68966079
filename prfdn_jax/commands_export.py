"""The bodies of ``prfdn export``, ``prfdn verify`` and video upscaling (``prfdn upscale IN.mp4 -o OUT.mp4``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prfdn_jax.commands import EXIT_ERROR, CLIError, check_writable, resolve_model


def cmd_export(args) -> int:
    from prfdn_jax.export import export

    out = Path(args.out)
    suffix = {"torch": (".pth", ".pt"), "onnx": (".onnx",), "safetensors": (".safetensors",)}[args.format]
    if out.suffix.lower() not in suffix:
        raise CLIError(f"{out}: a --format {args.format} file is named *{suffix[0]}")
    check_writable(out)
    model, label = resolve_model(args)
    path = export(model, args.format, out)
    a = model.arch
    print(f"{label} ({a.form} {a.layout}, x{a.scale}) -> {path} ({args.format})")
    return 0


def cmd_verify(args) -> int:
    from prfdn_jax.verify import verify

    if args.image and not Path(args.image).is_file():
        raise CLIError(f"{args.image}: no such file")
    if args.onnx and not Path(args.onnx).is_file():
        raise CLIError(f"{args.onnx}: no such file")
    model, label = resolve_model(args)
    res = verify(model, args.image, args.onnx, args.tolerance, torch_path=args.torch)
    for line in res.lines():
        print(line)
    if args.json:
        print(json.dumps(res.to_dict()))
    if not res.ok:
        print(f"prfdn: error: {label}: outputs differ by more than {args.tolerance:g} (see above)", file=sys.stderr)
        return EXIT_ERROR
    return 0


def upscale_video_command(args, src: Path) -> int:
    """``prfdn upscale IN.mp4 -o OUT.mp4``: one video in, one video out."""
    from tqdm import tqdm

    from prfdn_jax.deploy import deploy
    from prfdn_jax.video import upscale_video

    out = Path(args.output)
    if out.resolve() == src.resolve():
        raise CLIError(f"{out}: would overwrite the input video")
    check_writable(out)
    model, label = resolve_model(args)
    bar = tqdm(desc=f"x{model.arch.scale} {src.name}", unit="frame", file=sys.stderr, dynamic_ncols=True,
               leave=False, disable=None)

    def progress(done: int, total: int | None, fps: float) -> None:
        bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix(fps=f"{fps:.1f}")

    try:
        res = upscale_video(deploy(model, dtype=args.dtype), model.arch.scale, src, out, crf=args.crf,
                            lossless=args.lossless, progress=progress)
    finally:
        bar.close()
    for note in res.notes:
        print(f"note: {src}: {note}", file=sys.stderr)
    (w, h), (ow, oh) = res.in_size, res.out_size
    print(f"{src} -> {out} ({res.frames} frames {w}x{h} -> {ow}x{oh} at {float(res.frame_rate):g} fps, audio "
          f"{res.audio}; {res.fps:.1f} frames/s, {label})")
    return 0
