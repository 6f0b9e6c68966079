"""Tests for prfdn_jax.imaging: reading, writing and listing image files (the edge cases users meet)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageFile

from prfdn_jax import imaging
from prfdn_jax.imaging import IMAGE_EXTENSIONS, ImageError, list_images, read_image, write_image


def _rng(seed=0):
    return np.random.default_rng(seed)


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# read_image
# --------------------------------------------------------------------------------------------------


def test_read_rgb_png(tmp_path):
    x = _rng().integers(0, 256, (9, 7, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    p.write_bytes(_png_bytes(x))
    im = read_image(p)
    assert im.rgb.dtype == np.uint8 and im.rgb.shape == (9, 7, 3)
    assert np.array_equal(im.rgb, x) and im.alpha is None and im.notes == []


def test_read_missing(tmp_path):
    with pytest.raises(ImageError, match="no such file") as e:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(e.value) and "\n" not in str(e.value)


def test_read_directory(tmp_path):
    d = tmp_path / "dir.png"
    d.mkdir()
    with pytest.raises(ImageError, match="directory"):
        read_image(d)


def test_read_empty(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(p)


def test_read_text_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not a recognised image") as e:
        read_image(p)
    assert "notes.png" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_read_truncated_png(tmp_path, keep):
    x = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: incompressible
    data = _png_bytes(x)
    p = tmp_path / "cut.png"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as e:
        read_image(p)
    msg = str(e.value)
    assert "cut.png" in msg and "\n" not in msg


def test_read_truncated_even_if_pillow_lenient(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    x = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(x)
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError):
        read_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_read_truncated_jpeg(tmp_path):
    x = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(x).save(buf, format="JPEG", quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg"):
        read_image(p)


def test_read_16bit_scaled_not_wrapped(tmp_path):
    v = np.array([[0, 257, 32768, 65535], [128, 65280, 1000, 40000]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    PILImage.fromarray(v).save(p)  # uint16 -> mode I;16
    with PILImage.open(p) as pil:
        assert pil.mode.startswith("I")
    im = read_image(p)
    expect = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(im.rgb[:, :, 0], expect)
    assert im.rgb[0, 3, 0] == 255 and im.rgb[1, 1, 0] == 254  # wrap/clip would give other values
    assert np.array_equal(im.rgb[:, :, 0], im.rgb[:, :, 2])
    assert "16-bit input: converted to 8-bit" in im.notes


def test_read_48bit_png_is_flagged(tmp_path):
    """Pillow itself reduces 16-bit-per-channel colour PNGs to 8 bits (high byte); we say so."""
    import struct
    import zlib

    h, w = 3, 4
    v = _rng().integers(0, 65536, (h, w, 3)).astype(">u2")
    raw = b"".join(b"\x00" + v[i].tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    p = tmp_path / "rgb48.png"
    p.write_bytes(png)
    im = read_image(p)
    assert im.rgb.shape == (h, w, 3) and im.alpha is None
    assert any(n.startswith("16-bit input: converted to 8-bit") for n in im.notes)
    exact = np.floor(v.astype(np.int64) * 255 / 65535 + 0.5)
    assert np.abs(im.rgb.astype(np.int64) - exact).max() <= 1


def test_sixteen_to_eight_is_round_half_up():
    v = np.arange(65536)
    got = imaging._sixteen_to_eight(v)
    assert np.array_equal(got, np.floor(v * 255 / 65535 + 0.5).astype(np.uint8))


def test_read_grayscale(tmp_path):
    g = _rng().integers(0, 256, (5, 6), dtype=np.uint8)
    p = tmp_path / "g.png"
    PILImage.fromarray(g, "L").save(p)
    im = read_image(p)
    assert im.rgb.shape == (5, 6, 3)
    assert all(np.array_equal(im.rgb[:, :, c], g) for c in range(3))
    assert "grayscale input: replicated to RGB" in im.notes


def test_read_grayscale_alpha_and_bilevel(tmp_path):
    la = _rng().integers(0, 256, (5, 6, 2), dtype=np.uint8)
    p = tmp_path / "la.png"
    PILImage.fromarray(la, "LA").save(p)
    im = read_image(p)
    assert np.array_equal(im.rgb[:, :, 1], la[:, :, 0]) and np.array_equal(im.alpha, la[:, :, 1])
    b = tmp_path / "b.png"
    PILImage.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1").save(b)
    im = read_image(b)
    assert im.rgb[:, :, 0].tolist() == [[0, 255], [255, 0]]


def test_read_rgba(tmp_path):
    x = _rng().integers(0, 256, (8, 9, 4), dtype=np.uint8)
    p = tmp_path / "a.png"
    PILImage.fromarray(x, "RGBA").save(p)
    im = read_image(p)
    assert np.array_equal(im.rgb, x[:, :, :3]) and np.array_equal(im.alpha, x[:, :, 3])
    assert any("alpha" in n for n in im.notes)


def test_read_palette(tmp_path):
    x = _rng().integers(0, 256, (8, 9, 3), dtype=np.uint8)
    pal = PILImage.fromarray(x).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    p = tmp_path / "p.png"
    pal.save(p)
    im = read_image(p)
    assert np.array_equal(im.rgb, np.asarray(pal.convert("RGB")))
    assert im.alpha is None and any("palette" in n for n in im.notes)
    pal.info["transparency"] = 0
    q = tmp_path / "pt.png"
    pal.save(q, transparency=0)
    im = read_image(q)
    assert im.alpha is not None and im.alpha.shape == (8, 9)


def test_read_applies_exif_orientation(tmp_path):
    x = np.zeros((4, 6, 3), np.uint8)
    pil = PILImage.fromarray(x)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "o.jpg"
    pil.save(p, exif=exif.tobytes())
    im = read_image(p)
    assert im.rgb.shape == (6, 4, 3)
    assert any("EXIF orientation" in n for n in im.notes)


def test_read_jpeg_and_bmp(tmp_path):
    x = _rng().integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for ext in (".bmp", ".jpg"):
        p = tmp_path / f"x{ext}"
        PILImage.fromarray(x).save(p)
        im = read_image(p)
        assert im.rgb.shape == (16, 16, 3)
        if ext == ".bmp":
            assert np.array_equal(im.rgb, x)


# --------------------------------------------------------------------------------------------------
# write_image and list_images
# --------------------------------------------------------------------------------------------------


def test_write_roundtrip_png_bmp_and_parents(tmp_path):
    x = _rng().integers(0, 256, (10, 12, 3), dtype=np.uint8)
    for name in ("deep/er/a.png", "b.BMP"):
        p = tmp_path / name
        write_image(p, x)
        assert np.array_equal(read_image(p).rgb, x)
    assert sorted(os.listdir(tmp_path)) == ["b.BMP", "deep"]  # no temp files left


def test_write_jpeg_quality_and_alpha_dropped(tmp_path):
    x = _rng().integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = np.full((16, 16), 128, np.uint8)
    p = tmp_path / "x.jpeg"
    write_image(p, x, alpha=a)
    with PILImage.open(p) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    q = tmp_path / "x.png"
    write_image(q, x, alpha=a)
    im = read_image(q)
    assert np.array_equal(im.rgb, x) and np.array_equal(im.alpha, a)


def test_write_grayscale(tmp_path):
    g = _rng().integers(0, 256, (6, 5), dtype=np.uint8)
    p = tmp_path / "g.png"
    write_image(p, g)
    with PILImage.open(p) as im:
        assert im.mode == "L"
    assert np.array_equal(read_image(p).rgb[:, :, 0], g)


def test_write_unknown_extension_and_bad_arrays(tmp_path):
    x = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImageError, match="extension"):
        write_image(tmp_path / "x.gif", x)
    with pytest.raises(ImageError, match="uint8"):
        write_image(tmp_path / "x.png", x.astype(np.float32))
    with pytest.raises(ImageError, match="shape"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    assert os.listdir(tmp_path) == []


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "out.png"
    old = np.full((4, 4, 3), 9, np.uint8)
    write_image(p, old)

    def boom(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(PILImage.Image, "save", boom)
    with pytest.raises(ImageError, match="disk full"):
        write_image(p, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ImageError):
        write_image(tmp_path / "new.png", np.zeros((4, 4, 3), np.uint8))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temp file, no new.png
    assert np.array_equal(read_image(p).rgb, old)  # old file intact


def test_list_images(tmp_path):
    for n in ("b.png", "a.JPG", "c.jpeg", "d.bmp", "e.txt", ".hidden.png", "f.png.tmp"):
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    got = [q.name for q in list_images(tmp_path)]
    assert got == ["a.JPG", "b.png", "c.jpeg", "d.bmp"]
    assert ".png" in IMAGE_EXTENSIONS
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# 32-bit integer ("I") images and Pillow's warnings
# --------------------------------------------------------------------------------------------------


def test_read_32bit_integer_by_its_real_range(tmp_path):
    """An "I" image is read by its values: 8-bit values as they are, 16-bit ones scaled, wider refused."""
    v8 = _rng().integers(0, 256, (6, 7)).astype(np.int32)
    PILImage.fromarray(v8, "I").save(tmp_path / "v8.tif")
    im = read_image(tmp_path / "v8.tif")
    assert np.array_equal(im.rgb[:, :, 1], v8.astype(np.uint8))  # not divided by 257: not nearly black
    assert "32-bit integer input with values in 0..255: used as 8-bit" in im.notes
    assert not any(n.startswith("16-bit") for n in im.notes)
    v16 = _rng(1).integers(0, 65536, (6, 7)).astype(np.int32)
    PILImage.fromarray(v16, "I").save(tmp_path / "v16.tif")
    im = read_image(tmp_path / "v16.tif")
    assert np.array_equal(im.rgb[:, :, 0], imaging._sixteen_to_eight(v16))
    assert "32-bit integer input with 16-bit values: converted to 8-bit" in im.notes
    for name, v in (("wide.tif", np.full((6, 7), 70000, np.int32)), ("neg.tif", np.full((6, 7), -5, np.int32))):
        PILImage.fromarray(v, "I").save(tmp_path / name)
        with pytest.raises(ImageError, match=f"{name}: 32-bit integer image with values outside 0..65535"):
            read_image(tmp_path / name)


def test_read_16bit_pgm_is_16bit_even_when_dark(tmp_path):
    """A PGM declares its depth (Pillow opens 16-bit PGM as "I"): dark 16-bit values stay dark."""
    v = np.array([[0, 100], [200, 255]], ">u2")
    (tmp_path / "dark.pgm").write_bytes(b"P5 2 2 65535\n" + v.tobytes())
    im = read_image(tmp_path / "dark.pgm")
    assert np.array_equal(im.rgb[:, :, 0], imaging._sixteen_to_eight(v.astype(np.int64)))
    assert "16-bit input: converted to 8-bit" in im.notes


def test_pillow_warnings_name_the_file(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((40, 50, 3), np.uint8)).save(p)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1500)  # 2000 pixels: a warning, not an error
    with pytest.warns(PILImage.DecompressionBombWarning, match=r"big\.png: Image size \(2000 pixels\)"):
        read_image(p)
