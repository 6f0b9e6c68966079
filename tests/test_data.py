"""Tests for prfdn_jax.data: crops, degradations, determinism, skipping bad images, iterator state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import assert_same_batches, take
from prfdn_jax import data, imaging, resize


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 80), (72, 60), (96, 96)]):
        base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)  # smooth-ish content
        img = np.kron(base, np.ones((8, 8, 1), np.uint8))
        imaging.write_image(d / f"img{i}.png", img)
    return d


def test_batches_shapes_pairs_and_determinism(folder):
    kw = dict(scale=2, patch=48, batch=3, seed=1)
    a = take(data.make_iterator([folder], **kw), 4)
    b = take(data.make_iterator([folder], **kw), 4)
    c = take(data.make_iterator([folder], **{**kw, "seed": 2}), 4)
    assert a[0]["hr"].shape == (3, 48, 48, 3) and a[0]["lr"].shape == (3, 24, 24, 3)
    assert a[0]["hr"].dtype == np.uint8 and a[0]["lr"].dtype == np.uint8
    assert_same_batches(a, b)
    assert any(not np.array_equal(x["hr"], y["hr"]) for x, y in zip(a, c))
    # LR is MATLAB bicubic of the (augmented) HR crop
    for hr, lr in zip(a[1]["hr"], a[1]["lr"]):
        np.testing.assert_array_equal(lr, resize.downscale(hr, 2, "matlab"))


def _found_in(img, crop) -> bool:
    p = crop.shape[0]
    h, w = img.shape[0] - p + 1, img.shape[1] - p + 1
    if h < 1 or w < 1:
        return False
    corners = (img[:h, :w] == crop[0, 0]).all(-1) & (img[p - 1:, p - 1:] == crop[-1, -1]).all(-1)
    return any(np.array_equal(img[y:y + p, x:x + p], crop) for y, x in np.argwhere(corners))


def test_crops_come_from_the_images_with_flips_and_rotations(folder):
    imgs = [imaging.read_image(p).rgb for p in imaging.list_images(folder)]
    it = data.make_iterator([folder], scale=3, patch=48, batch=4, seed=0)
    orientations = set()
    for b in take(it, 5):
        for hr in b["hr"]:
            hits = [(k, flip) for k in range(4) for flip in (False, True)
                    if any(_found_in(img, (lambda c: c[:, ::-1] if flip else c)(np.rot90(hr, -k))) for img in imgs)]
            assert hits, "a crop that is in no image"
            orientations.add(hits[0])
    assert len(orientations) > 1  # flips / rotations happen


def test_ntire_degradation(folder):
    b = next(data.make_iterator([folder], scale=2, patch=48, batch=2, degradation="ntire", seed=0))
    for hr, lr in zip(b["hr"], b["lr"]):
        np.testing.assert_array_equal(lr, resize.ntire_degrade(hr, 2))


def test_corrupt_and_small_images_are_skipped_with_a_warning(folder, tmp_path):
    for p in imaging.list_images(folder):
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    imaging.write_image(tmp_path / "tiny.png", np.zeros((20, 30, 3), np.uint8))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        paths, _ = data.scan_images([tmp_path], min_size=48)
    msgs = [str(x.message) for x in w]
    assert any("broken.png" in m and "unreadable" in m for m in msgs), msgs
    assert any("truncated.png" in m for m in msgs), msgs
    assert any("tiny.png" in m and "smaller" in m for m in msgs), msgs
    assert sorted(p.name for p in paths) == ["img0.png", "img1.png", "img2.png"]
    # the dataset trains on the rest
    with pytest.warns(UserWarning, match="broken.png"):
        b = next(data.make_iterator([tmp_path], scale=2, patch=48, batch=2))
    assert b["hr"].shape == (2, 48, 48, 3)


@pytest.mark.filterwarnings("ignore:skipping image")
def test_errors(folder, tmp_path):
    with pytest.raises(data.DataError, match="no such folder"):
        data.make_iterator([tmp_path / "missing"], scale=2, patch=48, batch=2)
    with pytest.raises(data.DataError, match="no usable training image"):
        data.make_iterator([folder], scale=2, patch=200, batch=2)
    with pytest.raises(data.DataError, match="multiple of the scale"):
        data.make_iterator([folder], scale=3, patch=50, batch=2)
    with pytest.raises(data.DataError, match="below 15"):
        data.make_iterator([folder], scale=2, patch=28, batch=2)
    with pytest.raises(data.DataError, match="degradation"):
        data.make_iterator([folder], scale=2, patch=48, batch=2, degradation="jpeg")


def test_iterator_state_resumes_exactly(folder):
    it = data.make_iterator([folder], scale=2, patch=48, batch=2, seed=3)
    take(it, 5)
    state = it.get_state()
    nxt = take(it, 3)
    it2 = data.make_iterator([folder], scale=2, patch=48, batch=2, seed=3)
    it2.set_state(state)
    for x, y in zip(nxt, take(it2, 3)):
        np.testing.assert_array_equal(x["lr"], y["lr"])


def test_process_shards_split_the_stream(folder):
    full = np.concatenate([b["hr"] for b in take(data.make_iterator([folder], scale=2, patch=48, batch=1), 6)])
    s0 = np.concatenate([b["hr"] for b in take(data.make_iterator([folder], scale=2, patch=48, batch=1,
                                                                   shard=(0, 2)), 3)])
    s1 = np.concatenate([b["hr"] for b in take(data.make_iterator([folder], scale=2, patch=48, batch=1,
                                                                   shard=(1, 2)), 3)])
    np.testing.assert_array_equal(s0, full[0::2])
    np.testing.assert_array_equal(s1, full[1::2])


def test_worker_processes_give_the_same_batches(folder):
    ref = take(data.make_iterator([folder], scale=2, patch=48, batch=2, seed=5), 4)
    got = take(data.make_iterator([folder], scale=2, patch=48, batch=2, seed=5, workers=1), 4, close=True)
    assert_same_batches(ref, got)


def test_shared_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRFDN_SHARED", str(tmp_path))
    assert data.shared_path("data", "Set5") == tmp_path / "data" / "Set5"


def test_aligned_lr_mode_crops_the_sub_image_lr(folder):
    """lr_mode='aligned': LR crops of each sub-image's LR (made once), the same with a worker process."""
    kw = dict(scale=2, patch=48, batch=2, seed=7, lr_mode="aligned", sub_size=64, step=32)
    ref = take(data.make_iterator([folder], augment=False, **kw), 3)
    imgs = [imaging.read_image(p).rgb for p in imaging.list_images(folder)]
    for b in ref:
        for hr, lr in zip(b["hr"], b["lr"]):
            hits = [(img, y, x, sy, sx) for img in imgs for sy, sx, sh, sw in data.sub_boxes(*img.shape[:2], 2, 64, 32)
                    for y in range(0, sh - 48 + 1, 2) for x in range(0, sw - 48 + 1, 2)
                    if np.array_equal(img[sy + y:sy + y + 48, sx + x:sx + x + 48], hr)]
            assert hits
            img, y, x, sy, sx = hits[0]
            sub_lr = resize.downscale(img[sy:sy + 64, sx:sx + 64], 2, "matlab")
            np.testing.assert_array_equal(lr, sub_lr[y // 2:y // 2 + 24, x // 2:x // 2 + 24])
    a = take(data.make_iterator([folder], **kw), 3)
    assert_same_batches(a, take(data.make_iterator([folder], workers=1, **kw), 3, close=True))


def test_patch_sizes_cut_each_batch_to_one_listed_size_inside_the_patch_crop(folder):
    """patch_sizes: every batch is a scale-aligned window of the patch batch (the same stream without
    them), of one listed size; the LR stays the window of the LR crop; resumable like any stream."""
    kw = dict(scale=2, patch=48, batch=3, seed=4)
    full = take(data.make_iterator([folder], **kw), 12)
    cut = take(data.make_iterator([folder], **kw, patch_sizes=(32, 40, 48)), 12)
    assert {b["hr"].shape[1] for b in cut} == {32, 40, 48}
    for f, c in zip(full, cut):
        p = c["hr"].shape[1]
        assert c["hr"].shape == (3, p, p, 3) and c["lr"].shape == (3, p // 2, p // 2, 3)
        hits = [(y, x) for y in range(0, 48 - p + 1, 2) for x in range(0, 48 - p + 1, 2)
                if np.array_equal(f["hr"][:, y:y + p, x:x + p], c["hr"])]
        assert hits, "a batch that is not a window of the patch batch"
        y, x = hits[0]
        np.testing.assert_array_equal(c["lr"], f["lr"][:, y // 2:y // 2 + p // 2, x // 2:x // 2 + p // 2])
    it = data.make_iterator([folder], **kw, patch_sizes=(32, 40))
    take(it, 2)
    state, nxt = it.get_state(), take(it, 3)
    it2 = data.make_iterator([folder], **kw, patch_sizes=(32, 40))
    it2.set_state(state)
    assert_same_batches(nxt, take(it2, 3))


def test_patch_sizes_errors(folder):
    with pytest.raises(data.DataError, match="go beyond the patch 48"):
        data.make_iterator([folder], scale=2, patch=48, batch=2, patch_sizes=(32, 64))
    with pytest.raises(data.DataError, match="patch 47 is not a multiple"):
        data.make_iterator([folder], scale=3, patch=48, batch=2, patch_sizes=(47,))
    with pytest.raises(data.DataError, match="below 15"):
        data.make_iterator([folder], scale=2, patch=48, batch=2, patch_sizes=(28, 48))
