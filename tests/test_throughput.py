"""Throughput (issue 18): compiled programs per shape in a bounded cache, the persistent compile cache (moved,
turned off), shape buckets (exact: the padding is masked), and what `prfdn` imports on its fast paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import random_branch_arch, random_image, random_merged_arch, run_prfdn
from prfdn_jax import throughput
from prfdn_jax.deploy import PROGRAMS_KEPT, ShapeCache, deploy
from prfdn_jax.networks import build
from prfdn_jax.spec import default_arch


def _same(a, b) -> None:
    """The same function: equal up to float32 rounding (XLA may sum in another order for another shape)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def _same_uint8(a, b) -> None:
    """uint8 images of the same function: a pixel may round the other way (off by one), rarely."""
    d = np.abs(a.astype(int) - b.astype(int))
    assert d.max() <= 1 and (d > 0).mean() <= 1e-3, (d.max(), (d > 0).mean())


@pytest.fixture
def tiny():
    return deploy(build(random_merged_arch(3, "b4s", 2)))


# ----------------------------------------------------------------------------- bounded program cache
def test_shape_cache_keeps_the_last_eight():
    cache, built = ShapeCache(), []

    def get(k):
        return cache.get(k, lambda: built.append(k) or f"prog{k}")

    assert PROGRAMS_KEPT == cache.size == 8
    for k in range(9):
        get(k)
    assert len(cache) == 8 and cache.keys() == list(range(1, 9))  # 0, the least recently used, evicted
    assert get(3) == "prog3" and built == list(range(9))  # kept: no build, and now the most recent
    get(0)  # built again, evicting 1
    assert built == [*range(9), 0] and cache.keys() == [2, 4, 5, 6, 7, 8, 3, 0]
    assert cache.builds == 10 and cache.hits == 1


def test_deployed_programs_bounded_and_outputs_unchanged(tiny):
    assert tiny.programs.size == PROGRAMS_KEPT
    tiny.programs = ShapeCache(size=2)  # three shapes through a cache of two: the bound, with fewer compiles
    shapes = [(16, 17), (18, 21), (20, 15)]
    first = [np.asarray(tiny(random_image(*s, seed=i))) for i, s in enumerate(shapes)]
    assert len(tiny.programs) == 2 and tiny.programs.builds == 3
    assert ((1, 16, 17, 3), False) not in tiny.programs.keys()
    np.testing.assert_array_equal(tiny(random_image(*shapes[0], seed=0)), first[0])  # compiled again: same output
    np.testing.assert_array_equal(tiny(random_image(*shapes[0], seed=0)), first[0])  # kept this time
    assert tiny.programs.builds == 4 and tiny.programs.hits == 1


# ----------------------------------------------------------------------------- shape buckets
@pytest.mark.parametrize("net", ["merged", "wide", "rfdn"])
def test_padded_input_gives_the_images_own_output(net):
    model = {"merged": lambda: build(random_merged_arch(5, "b2s", 3)),
             "wide": lambda: build(random_branch_arch(6, "b2", 2, form="wide")),
             "rfdn": lambda: build(default_arch("rfdn", nf=8, scale=2, n_blocks=2))}[net]()
    d, s = deploy(model), model.arch.scale
    padded = np.full((2, 40, 36, 3), 255.0, np.float32)  # anything in the padding: it is masked
    for h, w in [(15, 15), (40, 33)]:  # the smallest image (ESA pools to one pixel), one side padded
        img = random_image(h, w, seed=h, batch=2)
        padded[:, :h, :w] = img
        _same(np.asarray(d(padded, valid=(h, w)))[:, :h * s, :w * s], d(img))
    assert sum(k[1] for k in d.programs.keys()) == 1  # one padded program served both sizes


def test_padded_input_refuses_what_does_not_fit(tiny):
    with pytest.raises(ValueError, match="does not fit"):
        tiny(np.zeros((1, 20, 20, 3), np.float32), valid=(21, 20))
    with pytest.raises(ValueError, match="too small"):
        tiny(np.zeros((1, 20, 20, 3), np.float32), valid=(14, 20))


def test_plan_merges_while_a_compile_costs_more_than_the_padding():
    sizes = [(100, 100), (101, 102), (100, 103), (300, 300), (300, 301)]
    assert throughput.plan_buckets(sizes, compile_px=0) == {s: s for s in sizes}
    plan = throughput.plan_buckets(sizes, compile_px=2000)
    assert set(plan.values()) == {(101, 103), (300, 301)}
    assert set(throughput.plan_buckets(sizes, compile_px=1e9).values()) == {(300, 301)}
    capped = throughput.plan_buckets(sizes, compile_px=1e9, max_px=300 * 300)
    assert capped[(300, 301)] == (300, 301) and capped[(300, 300)] == (300, 300)  # the merge would exceed it
    assert throughput.plan_buckets(sizes, multiple=128)[(101, 102)] == (128, 128)
    assert throughput.plan_buckets(sizes * 2, compile_px=2000) == plan  # deterministic: same sizes, same plan
    order = throughput.bucket_order(sizes + [None], plan)
    assert order == [0, 1, 2, 3, 4, 5]
    assert throughput.bucket_order([(1, 1), (2, 2), (1, 1), (3, 3)], {}) == [0, 2, 1, 3]  # off: equal sizes in a row
    assert throughput.largest_square(lambda h, w: h * w <= 1000 * 900) == 948
    assert throughput.largest_square(lambda h, w: False) == 15


def test_bucketed_apply_equals_per_size(tiny):
    sizes = [(20, 30), (24, 22), (20, 30)]
    plan = throughput.plan_buckets(sizes, compile_px=1e9)
    apply = throughput.Bucketed(tiny, plan, tiny.scale)
    for i, (h, w) in enumerate(sizes):
        x = random_image(h, w, seed=i)
        _same(apply(x), tiny(x))
    assert [k for k in tiny.programs.keys() if k[1]] == [((1, 24, 30, 3), True)]


def test_bucketed_routes_only_planned_sizes():
    calls = []

    def fake(x, valid=None):
        calls.append((x.shape, valid))
        return np.zeros((x.shape[0], 2 * x.shape[1], 2 * x.shape[2], 3), np.float32)

    plan = {(20, 30): (24, 30), (24, 22): (24, 30), (50, 50): (50, 50)}
    apply = throughput.Bucketed(fake, plan, 2)
    assert apply(np.zeros((1, 20, 30, 3))).shape == (1, 40, 60, 3)
    apply(np.zeros((1, 50, 50, 3)))  # its shape is its own, alone: the plain program
    apply(np.zeros((4, 24, 22, 3)))  # a planned size in a batch (tiles never are, but a batch works)
    apply(np.zeros((4, 64, 64, 3)))  # tiles: not planned
    assert calls == [((1, 24, 30, 3), (20, 30)), ((1, 50, 50, 3), None), ((4, 24, 30, 3), (24, 22)),
                     ((4, 64, 64, 3), None)]


def test_upscale_folder_buckets_equal_off(tmp_path, capsys):
    from prfdn_jax.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(20, 26), (23, 19), (17, 30)]):
        Image.fromarray(random_image(h, w, seed=i)[0].astype(np.uint8)).save(src / f"{i}.png")
    outs = {}
    for b in ("auto", "off"):
        assert main(["upscale", str(src), "-o", str(tmp_path / b), "--bucket", b, "--no-compile-cache"]) == 0
        outs[b] = [np.asarray(Image.open(tmp_path / b / f"{i}.png")) for i in range(3)]
    for x, y in zip(outs["auto"], outs["off"]):
        _same_uint8(x, y)
    capsys.readouterr()
    assert main(["upscale", str(src), "-o", str(tmp_path / "x"), "--bucket", "big"]) == 2
    assert "--bucket" in capsys.readouterr().err


# ----------------------------------------------------------------------------- persistent compile cache
def test_cache_dir_default_moved_and_off(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert throughput.cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == throughput.Path("/x/cache/prfdn/jax")
    assert throughput.cache_dir({"PRFDN_CACHE_DIR": "/y/c", "XDG_CACHE_HOME": "/x"}) == throughput.Path("/y/c")
    for off in ("off", "", "OFF", "0"):
        assert throughput.cache_dir({**home, "PRFDN_CACHE_DIR": off}) is None


def test_trim_removes_the_oldest_files(tmp_path):
    for i in range(5):
        f = tmp_path / f"e{i}-cache"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 + i, 1000 + i))
    assert throughput.trim_cache(tmp_path, max_bytes=250) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e3-cache", "e4-cache"]


def _upscale_with(tmp_path, env: dict, *extra) -> subprocess.CompletedProcess:
    src = tmp_path / "one.png"
    Image.fromarray(random_image(18, 21)[0].astype(np.uint8)).save(src)
    code = "import sys; from prfdn_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    full = dict(os.environ, **env, PYTHONPATH=str(throughput.Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-c", code, "upscale", src, "-o", tmp_path / "out.png", *extra],
                          env=full, capture_output=True, text=True, timeout=300)


def test_cache_folder_moved_by_the_variable(tmp_path):
    p = _upscale_with(tmp_path, {"PRFDN_CACHE_DIR": str(tmp_path / "moved")})
    assert p.returncode == 0, p.stderr
    assert any((tmp_path / "moved").iterdir())


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_cache_off_writes_nothing(tmp_path, how):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env["PRFDN_CACHE_DIR"] = str(tmp_path / "c") if how == "flag" else "off"
    p = _upscale_with(tmp_path, env, *(["--no-compile-cache"] if how == "flag" else []))
    assert p.returncode == 0, p.stderr
    assert not any(tmp_path.joinpath(d).exists() for d in ("c", "home", "xdg"))


def test_unwritable_cache_folder_is_one_note(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = _upscale_with(tmp_path, {"PRFDN_CACHE_DIR": str(blocker / "cache")})
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if "compile cache" in ln]
    assert len(notes) == 1 and notes[0].startswith("note: compile cache off"), p.stderr


# ----------------------------------------------------------------------------- lazy imports
HEAVY = ("torch", "onnx", "onnxruntime", "av", "matplotlib", "orbax", "grain", "tensorstore")


def test_help_imports_no_jax_and_upscale_no_heavy_extras(tmp_path):
    probe = ("import sys, json; from prfdn_jax.cli import main; rc = main(sys.argv[2:]); "
             "print(json.dumps([m for m in sys.argv[1].split(',') if m in sys.modules]))")
    root = str(throughput.Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, PRFDN_CACHE_DIR="off")
    run = lambda *a: subprocess.run([sys.executable, "-c", probe, ",".join(HEAVY + ("jax",)), *map(str, a)],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=300)
    p = run("--help")
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [], p.stdout
    src = tmp_path / "one.png"
    Image.fromarray(random_image(18, 21)[0].astype(np.uint8)).save(src)
    p = run("upscale", src, "-o", tmp_path / "out.png")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == ["jax"], p.stdout


# ----------------------------------------------------------------------------- prfdn bench folder
def test_bench_folder_makes_distinct_sizes_and_reports_ratios(tmp_path):
    from prfdn_jax.bench_folder import format_folder, make_mixed

    sizes = make_mixed(tmp_path / "m", count=5, sides=(15, 40), seed=1)
    assert len(set(sizes)) == 5 and sizes == make_mixed(tmp_path / "n", count=5, sides=(15, 40), seed=1)
    assert sorted(Image.open(p).size[::-1] for p in (tmp_path / "m").iterdir()) == sorted(sizes)
    rows = [{"job": j, "run": r, "images": 5, "seconds": t, "peak_mb": 300.0, "images_per_s": 5 / t, "ratio": q,
             "cpu_s": 2 * t, "cpu_ratio": q}
            for j, r, t, q in [("one size (30x30)", "first", 4.0, 1.0), ("one size (30x30)", "second", 3.0, 1.0),
                               ("mixed, --bucket auto", "first", 8.0, 2.0), ("mixed, --bucket auto", "second", 6.0, 2.0)]]
    text = format_folder({"rows": rows, "folder": "made", "images": 5, "distinct": 5, "pixels": 4500, "side": 30})
    assert "| mixed, --bucket auto | second (warm) | 6.0 | 0.83 | 300 | 2.00 | 12.0 | 2.00 |" in text
    assert "first run 2.00x (target <= 3x: met); second run 2.00x (target <= 1.5x: missed)" in text


def test_bench_folder_bad_input_is_one_line(tmp_path, capsys):
    from prfdn_jax.cli import main

    for args, fragment in [(("bench", "folder", tmp_path / "nope"), "no such folder"),
                           (("bench", "folder", "--buckets", "auto,huge"), "--buckets"),
                           (("bench", "folder", "--size", "64"), "--size"),
                           (("bench", "--model", "prfdn-x2", "--images", "3"), "--images")]:
        rc = main([str(a) for a in args])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("prfdn: error: ") and fragment in lines[0], lines


@pytest.mark.slow
def test_bench_folder_end_to_end(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(20, 26), (23, 19)]):
        Image.fromarray(random_image(h, w, seed=i)[0].astype(np.uint8)).save(src / f"{i}.png")
    p = run_prfdn("bench", "folder", src, "--buckets", "auto", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [(r["job"], r["run"]) for r in res["rows"]] == [("one size (22x22)", "first"), ("one size (22x22)", "second"),
                                                          ("mixed, --bucket auto", "first"),
                                                          ("mixed, --bucket auto", "second")]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in res["rows"])
