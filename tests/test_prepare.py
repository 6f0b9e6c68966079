"""Tests for prfdn_jax.prepare and prepared datasets: records, exact LR, same batches as the folder
pipeline (lr_mode='aligned'), resuming, auto-detection, errors, the throughput benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import assert_same_batches, take
from prfdn_jax import data, imaging, prepare, resize

pytestmark = pytest.mark.filterwarnings("ignore:skipping image")  # img3: under the folder pipeline's patch

S, PATCH, SUB, STEP = 2, 32, 48, 20
SIZES = [(101, 77), (64, 130), (48, 48), (40, 31)]  # the last: prepared (>= 30) but under the patch


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        img = np.kron(base, np.ones((4, 4, 1), np.uint8))[:h, :w]
        img = (img.astype(np.int16) + rng.integers(-20, 21, img.shape)).clip(0, 255).astype(np.uint8)
        imaging.write_image(d / f"img{i}.png", img)
    return d


@pytest.fixture(scope="module")
def prepared(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "pairs"
    summary = prepare.prepare([folder], out, scale=S, sub_size=SUB, step=STEP)
    return out, summary


def _records(path):
    meta = data.read_sidecar(path)
    src = data.PreparedSource(meta["records"], range(meta["count"]))
    return meta, [src[i] for i in range(len(src))]


def test_sub_boxes_cover_the_image_on_the_scale_grid():
    assert data.sub_boxes(101, 77, 2, 48, 20) == [(y, x, 48, 48) for y in (0, 20, 40, 52) for x in (0, 20, 28)]
    assert data.sub_boxes(40, 31, 2, 48, 20) == [(0, 0, 40, 30)]  # smaller than sub_size: modcropped whole
    for h, w in [(481, 321), (1020, 2040), (97, 500)]:
        for s in (2, 3, 4):
            boxes = data.sub_boxes(h, w, s, 48 * s, 24 * s)
            cover = np.zeros((h, w), bool)
            for y, x, bh, bw in boxes:
                assert y % s == x % s == bh % s == bw % s == 0 and y + bh <= h and x + bw <= w
                cover[y:y + bh, x:x + bw] = True
            assert cover[:h - h % s, :w - w % s].all()


def test_prepare_writes_records_and_sidecar(folder, prepared):
    out, summary = prepared
    meta, recs = _records(out)
    n = sum(len(data.sub_boxes(h, w, S, SUB, STEP)) for h, w in SIZES)
    assert summary["count"] == meta["count"] == len(recs) == n and summary["images"] == meta["images"] == 4
    assert {k: meta[k] for k in ("scale", "degradation", "sub_size", "step")} == \
        {"scale": S, "degradation": "matlab", "sub_size": SUB, "step": STEP}
    assert meta["sources"] == [str(folder.resolve())] and meta["skipped"] == []
    assert summary["bytes_per_pair"] == (out / "pairs.array_record").stat().st_size / n
    assert sorted(p.name for p in out.iterdir()) == ["pairs.array_record", "prepared.json"]  # no temp files
    # every LR is exactly the MATLAB bicubic of its HR, and the HR is the image's sub-image, in order
    k = 0
    for i, (h, w) in enumerate(SIZES):
        img = imaging.read_image(folder / f"img{i}.png").rgb
        for (y, x, bh, bw), shape in zip(data.sub_boxes(h, w, S, SUB, STEP), meta["shapes"][k:]):
            hr, lr = recs[k]["hr"], recs[k]["lr"]
            assert list(hr.shape[:2]) == shape
            np.testing.assert_array_equal(hr, img[y:y + bh, x:x + bw])
            np.testing.assert_array_equal(lr, resize.downscale(hr, S, "matlab"))
            k += 1


def test_rescale_adds_downscaled_copies_after_the_originals(folder, prepared, tmp_path):
    _, recs = _records(prepared[0])
    out = tmp_path / "multi"
    summary = prepare.prepare([folder], out, scale=S, sub_size=SUB, step=STEP, rescale=[1, 0.75])
    meta, multi = _records(out)
    assert meta["rescale"] == [1.0, 0.75] and summary["images"] == meta["images"] == 4
    for a, b in zip(recs, multi):  # the x1 records come first, unchanged
        np.testing.assert_array_equal(a["hr"], b["hr"])
    k = len(recs)
    for i, (h, w) in enumerate(SIZES):  # then every image at x0.75 (img3 goes under 15*S: skipped)
        small = resize.imresize_matlab(imaging.read_image(folder / f"img{i}.png").rgb, 0.75)
        if min(small.shape[:2]) < 15 * S:
            continue
        for y, x, bh, bw in data.sub_boxes(*small.shape[:2], S, SUB, STEP):
            np.testing.assert_array_equal(multi[k]["hr"], small[y:y + bh, x:x + bw])
            np.testing.assert_array_equal(multi[k]["lr"], resize.downscale(multi[k]["hr"], S, "matlab"))
            k += 1
    assert k == len(multi) == meta["count"] and meta["skipped"] == [str(folder / "img3.png")]
    for bad in ([], [0], [1.5], [1, 1], [float("nan")], ["x"]):
        _one_line_error("rescale must be", prepare.prepare, [folder], tmp_path / "o", scale=S, rescale=bad)


def test_prepared_batches_equal_the_aligned_folder_pipeline(folder, prepared):
    out, _ = prepared
    for kw in (dict(seed=4), dict(seed=5, augment=False), dict(seed=6, shard=(1, 2))):
        kw = dict(scale=S, patch=PATCH, batch=3, **kw)
        a = take(data.make_iterator([out], **kw), 6)
        b = take(data.make_iterator([folder], lr_mode="aligned", sub_size=SUB, step=STEP, **kw), 6)
        for x, y in zip(a, b):
            assert x["hr"].shape == (3, PATCH, PATCH, 3) and x["lr"].shape == (3, PATCH // S, PATCH // S, 3)
            assert x["hr"].dtype == x["lr"].dtype == np.uint8
            np.testing.assert_array_equal(x["hr"], y["hr"])
            np.testing.assert_array_equal(x["lr"], y["lr"])
    # the aligned LR crop is the HR crop's place in the sub-image's LR: checked on un-augmented crops
    meta, recs = _records(out)
    for hr, lr in zip(*(lambda bt: (bt["hr"], bt["lr"]))(next(data.make_iterator(
            [out], scale=S, patch=PATCH, batch=8, augment=False, seed=1)))):
        hits = [r for r in recs for y in range(0, r["hr"].shape[0] - PATCH + 1, S)
                for x in range(0, r["hr"].shape[1] - PATCH + 1, S)
                if np.array_equal(r["hr"][y:y + PATCH, x:x + PATCH], hr)
                and np.array_equal(r["lr"][y // S:(y + PATCH) // S, x // S:(x + PATCH) // S], lr)]
        assert hits


def test_prepared_iterator_resumes_exactly(prepared):
    out, _ = prepared
    kw = dict(scale=S, patch=PATCH, batch=2, seed=3)
    it = data.make_iterator([out], **kw)
    take(it, 7)
    state = it.get_state()
    nxt = take(it, 4)
    it2 = data.make_iterator([out], **kw)
    it2.set_state(state)
    assert_same_batches(nxt, take(it2, 4))


def test_file_layout_autodetection_and_workers(folder, tmp_path):
    f = tmp_path / "sets" / "x2.array_record"
    prepare.prepare([folder], f, scale=S, sub_size=SUB, step=STEP, workers=1, compression="zstd")
    assert (tmp_path / "sets" / "x2.array_record.json").is_file()
    assert data.find_prepared(f) == tmp_path / "sets" / "x2.array_record.json"
    assert data.find_prepared(folder) is None
    kw = dict(scale=S, patch=PATCH, batch=2, seed=9)
    ref = take(data.make_iterator([folder], lr_mode="aligned", sub_size=SUB, step=STEP, **kw), 3)
    assert_same_batches(ref, take(data.make_iterator([str(f)], workers=1, **kw), 3, close=True))


def test_ntire_prepared_lr(folder, tmp_path):
    prepare.prepare([folder], tmp_path, scale=S, sub_size=SUB, step=STEP, degradation="ntire")
    meta, recs = _records(tmp_path)
    assert meta["degradation"] == "ntire"
    for r in recs[:3]:
        np.testing.assert_array_equal(r["lr"], resize.ntire_degrade(np.ascontiguousarray(r["hr"]), S))
    b = next(data.make_iterator([tmp_path], scale=S, patch=PATCH, batch=2, degradation="ntire"))
    assert b["lr"].shape == (2, PATCH // S, PATCH // S, 3)


def _one_line_error(match, fn, *a, **kw):
    with pytest.raises(data.DataError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)


def test_bad_inputs_give_one_line_data_errors(folder, prepared, tmp_path):
    out, _ = prepared
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    P = prepare.prepare
    _one_line_error("no image files", P, [tmp_path / "empty"], tmp_path / "o", scale=2)
    _one_line_error("no such folder", P, [tmp_path / "missing"], tmp_path / "o", scale=2)
    _one_line_error("degradation", P, [folder], tmp_path / "o", scale=2, degradation="jpeg")
    _one_line_error("scale must be", P, [folder], tmp_path / "o", scale=5)
    _one_line_error("sub_size", P, [folder], tmp_path / "o", scale=3, sub_size=100)
    _one_line_error("step", P, [folder], tmp_path / "o", scale=2, step=0)
    _one_line_error("cannot write", P, [folder], tmp_path / "afile" / "x.array_record", scale=2)
    _one_line_error("not a folder", P, [folder], tmp_path / "afile", scale=2)
    _one_line_error("is a source folder", P, [folder], folder, scale=2)
    imaging.write_image(tmp_path / "small" / "tiny.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.warns(UserWarning, match="tiny.png"):
        _one_line_error("no usable image", P, [tmp_path / "small"], tmp_path / "o2", scale=2)
    assert not (tmp_path / "o2" / "prepared.json").exists() and not list((tmp_path / "o2").iterdir())
    M = data.make_iterator
    _one_line_error("scale x2, not x3", M, [out], scale=3, patch=48, batch=2)
    _one_line_error("larger than its sub-images", M, [out], scale=2, patch=64, batch=2)
    _one_line_error("degradation", M, [out], scale=2, patch=32, batch=2, degradation="ntire")
    _one_line_error("only training data source", M, [out, folder], scale=2, patch=32, batch=2)
    _one_line_error("larger than the sub-images", M, [folder], scale=2, patch=64, batch=2, lr_mode="aligned",
                    sub_size=SUB, step=STEP)
    _one_line_error("lr_mode", M, [folder], scale=2, patch=32, batch=2, lr_mode="nope")
    # a records file without its sidecar; a sidecar that does not match its records
    bare = tmp_path / "bare.array_record"
    bare.write_bytes((out / "pairs.array_record").read_bytes())
    _one_line_error("no sidecar", M, [bare], scale=2, patch=32, batch=2)
    _one_line_error("no such file", M, [tmp_path / "missing.array_record"], scale=2, patch=32, batch=2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pairs.array_record").write_bytes((out / "pairs.array_record").read_bytes())
    meta = json.loads((out / "prepared.json").read_text())
    (bad / "prepared.json").write_text(json.dumps({**meta, "count": 3, "shapes": meta["shapes"][:3]}))
    _one_line_error("sidecar says 3", M, [bad], scale=2, patch=32, batch=2)
    (bad / "prepared.json").write_text("{not json")
    _one_line_error("bad prepared-dataset sidecar", M, [bad], scale=2, patch=32, batch=2)


def test_bench_data_reports_both_pipelines(folder, prepared):
    out, _ = prepared
    rows = [prepare.bench_data(src, scale=S, patch=PATCH, batch=2, seconds=0.2, warmup=0.1) for src in (folder, out)]
    assert [r["pipeline"] for r in rows] == ["folder", "prepared"]
    for r in rows:
        assert r["pairs"] > 0 and r["pairs_per_s"] > 0 and r["pairs_per_cpu_s"] > 0
    assert "prepared" in prepare.format_bench(rows)
