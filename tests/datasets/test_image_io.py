from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.datasets.io import SampleError, read_image, read_mask


def test_rgb_jpeg_and_png(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg")
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (8, 12, 3) and out.dtype == np.uint8


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.dstack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30, 0)])
    Image.fromarray(rgba).save(tmp_path / "t.png")
    np.testing.assert_array_equal(
        read_image(tmp_path / "t.png")[0, 0], [10, 20, 30]
    )  # alpha dropped
    palette_image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8))
    palette_image.putpalette([0, 0, 0, 200, 100, 50])
    palette_image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[0, 0, 0], [200, 100, 50]]])
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[0, 1]])  # masks keep indices


def test_16bit_png_scaled_by_257(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png")[..., 0], [[0, 1, 255, 128]])


def test_multiband_and_planar_16bit_tiff(tmp_path):
    bands = np.zeros((5, 6, 7), dtype=np.uint16)
    for b in range(5):
        bands[b] = 257 * (10 * (b + 1))
    tifffile.imwrite(
        tmp_path / "planar.tif", bands, photometric="minisblack", planarconfig="separate"
    )
    tifffile.imwrite(
        tmp_path / "contig.tiff",
        np.moveaxis(bands, 0, -1),
        photometric="minisblack",
        planarconfig="contig",
    )
    for name in ("planar.tif", "contig.tiff"):
        out = read_image(tmp_path / name)
        assert out.shape == (6, 7, 3), name
        np.testing.assert_array_equal(out[0, 0], [10, 20, 30])  # first three bands


def test_float_tiff_rule(tmp_path):
    tifffile.imwrite(tmp_path / "unit.tif", np.full((3, 3), 0.5, dtype=np.float32))
    assert read_image(tmp_path / "unit.tif")[0, 0, 0] == 128  # [0, 1] -> x 255
    tifffile.imwrite(tmp_path / "wide.tif", np.array([[-5.0, 100.0, 900.0]], dtype=np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif")[0, :, 0], [0, 100, 255])


def test_lzw_tiff_falls_back_to_pil(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), rgb)


@pytest.mark.parametrize("content", [b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_undecodable_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(SampleError, match=r"cannot decode image '.*broken\.jpg'") as info:
        read_image(path)
    assert info.value.problem.kind == "undecodable"


def test_truncated_png_is_undecodable(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError, match=r"t\.png"):
        read_image(tmp_path / "t.png")


def test_missing_file(tmp_path):
    with pytest.raises(SampleError, match="file not found"):
        read_image(tmp_path / "nope.png")


def test_colour_mask_rejected_but_gray_rgb_accepted(tmp_path):
    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(SampleError, match=r"c\.png' is a colour \(RGB\) image.*palette") as info:
        read_mask(tmp_path / "c.png")
    assert info.value.problem.kind == "colour-mask"
    gray = np.repeat(np.array([[0, 1], [2, 255]], dtype=np.uint8)[..., None], 3, 2)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), [[0, 1], [2, 255]])


def test_palette_tiff_image_gets_colours_mask_gets_indices(tmp_path):
    indices = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8))
    indices.putpalette([0, 0, 0, 10, 200, 30])
    indices.save(tmp_path / "p.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif")[0, 1], [10, 200, 30])
    np.testing.assert_array_equal(read_mask(tmp_path / "p.tif"), [[0, 1], [1, 0]])


def test_missing_mask_says_mask(tmp_path):
    with pytest.raises(SampleError, match=r"cannot decode mask '.*m\.png': file not found"):
        read_mask(tmp_path / "m.png")
