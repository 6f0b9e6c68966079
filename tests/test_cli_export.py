"""`prfdn export`, `prfdn verify` and `prfdn upscale IN.mp4 -o OUT.mp4` as a user runs them."""

from __future__ import annotations

import pytest
import torch

from helpers import frames_of, info, make_video, shared_path
from prfdn_jax.cli import main


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_torch_equals_the_released_checkpoint(tmp_path, capsys):
    out = tmp_path / "x2.pth"
    code, text, _ = run(["export", "--model", "prfdn-x2", "--format", "torch", out], capsys)
    assert code == 0 and out.is_file(), text
    got = torch.load(out, weights_only=True)
    want = torch.load(shared_path("weights", "prfdn_x2_pruned.pth"), weights_only=True)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_export_onnx_then_verify_passes(tmp_path, capsys):
    onnx_path = tmp_path / "x3.onnx"
    assert run(["export", "--model", "prfdn-x3", "--format", "onnx", onnx_path], capsys)[0] == 0
    code, out, _ = run(["verify", "--model", "prfdn-x3", "--onnx", onnx_path], capsys)
    assert code == 0 and "jax vs onnx" in out and out.strip().splitlines()[-1].startswith("OK"), out


def test_verify_fails_on_a_perturbed_weight(tmp_path, capsys):
    pth = tmp_path / "x2.pth"
    assert run(["export", "--model", "prfdn-x2", "--format", "torch", pth], capsys)[0] == 0
    sd = torch.load(pth, weights_only=True)
    sd["B1234.c2_r.weight"][0, 0, 1, 1] += 0.5
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    code, out, err = run(["verify", "--model", "prfdn-x2", "--torch", bad], capsys)
    assert code == 1 and err.startswith("prfdn: error:") and len(err.strip().splitlines()) == 1


def test_export_refuses_a_wrong_suffix(tmp_path, capsys):
    code, _, err = run(["export", "--model", "prfdn-x2", "--format", "onnx", tmp_path / "x.pth"], capsys)
    assert code == 1 and "prfdn: error:" in err and not (tmp_path / "x.pth").exists()


@pytest.mark.slow
def test_upscale_a_video(tmp_path, capsys):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_video(src, seconds=2)
    code, out, err = run(["upscale", src, "-o", dst, "--model", "prfdn-x2"], capsys)
    assert code == 0, err
    a, b = info(src), info(dst)
    assert b["rate"] == a["rate"] and b["size"] == (2 * a["size"][0], 2 * a["size"][1]) and b["audio"]
    assert len(frames_of(dst)) == len(frames_of(src))


def test_broken_video_leaves_no_output(tmp_path, capsys):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    code, _, err = run(["upscale", src, "-o", dst], capsys)
    assert code == 1 and err.startswith("prfdn: error:") and len(err.strip().splitlines()) == 1
    assert not dst.exists()
