"""Transparent images (issue 17): no dark fringe at transparent edges (premultiplied colour), fully opaque
images bit-identical to RGB ones, transparency flattened onto --background where the output has no alpha
channel; a folder's progress as plain lines when stderr is not a terminal."""

import numpy as np
import pytest
from PIL import Image

from prfdn_jax import registry
from prfdn_jax.cli import main
from prfdn_jax.deploy import deploy
from prfdn_jax.inference import upscale_array


@pytest.fixture(scope="module")
def x2():
    return deploy(registry.load("prfdn-x2"))


def _disc(path, n=48, r=15, colour=(255, 0, 0)):
    """A ``colour`` disc on transparent black (RGBA PNG)."""
    yy, xx = np.mgrid[0:n, 0:n]
    rgba = np.zeros((n, n, 4), np.uint8)
    rgba[(yy - n / 2 + 0.5) ** 2 + (xx - n / 2 + 0.5) ** 2 <= r * r] = (*colour, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def test_transparent_edges_keep_their_colour(tmp_path, capsys):
    src, out = _disc(tmp_path / "disc.png"), tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out)]) == 0
    a = np.asarray(Image.open(out))
    edge = (a[..., 3] >= 128) & (a[..., 3] < 255)  # the upscaled disc's soft rim
    assert edge.sum() > 100
    red = a[edge][:, 0].astype(int)
    assert red.min() >= 240, (red.min(), red.mean())  # was 156 (mean 228): the black under the alpha bled in
    assert a[edge][:, 1:3].max() <= 40
    assert (a[..., 3] == 0).any() and (a[a[..., 3] == 0][:, :3] == 0).all()


def test_opaque_images_are_bit_identical_to_rgb(tmp_path, x2, capsys):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((40, 48), 255, np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    for name in ("rgba", "rgb"):
        assert main(["upscale", str(tmp_path / f"{name}.png"), "-o", str(tmp_path / f"{name}_x2.png")]) == 0
    got, plain = np.asarray(Image.open(tmp_path / "rgba_x2.png")), np.asarray(Image.open(tmp_path / "rgb_x2.png"))
    want = upscale_array(x2, rgb, 2)
    np.testing.assert_array_equal(got[..., :3], want)
    np.testing.assert_array_equal(plain, want)
    assert (got[..., 3] == 255).all()


def test_rgba_to_jpg_is_flattened_onto_the_background(tmp_path, capsys):
    src = _disc(tmp_path / "disc.png")
    for args, bg in (([], (255, 255, 255)), (["--background", "black"], (0, 0, 0)),
                     (["--background", "#00ff00"], (0, 255, 0))):
        out = tmp_path / f"out{len(args)}{bg[1]}.jpg"
        assert main(["upscale", str(src), "-o", str(out), *args]) == 0
        err = capsys.readouterr().err
        hexa = "#{:02X}{:02X}{:02X}".format(*bg)
        assert f"note: {src}: transparency flattened onto {hexa} (--background): .jpg has no alpha channel" in err
        assert "alpha channel upscaled" not in err
        a = np.asarray(Image.open(out)).astype(int)
        assert np.abs(a[:4, :4] - bg).max() <= 3  # a transparent corner
        assert np.abs(a[48, 48] - (255, 0, 0)).max() <= 8  # the disc
    assert main(["upscale", str(src), "-o", str(tmp_path / "x.jpg"), "--background", "nocolour"]) == 2
    assert "is not a colour" in capsys.readouterr().err


def test_folder_progress_is_plain_lines_without_a_terminal(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 20, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    assert main(["upscale", str(folder), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err, repr(err)
    assert "x2 prfdn-x2: 3/3 img (" in err, err
