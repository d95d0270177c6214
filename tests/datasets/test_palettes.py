from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segkit.datasets.palettes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_COLOR,
    cityscapes_id_to_train_id,
    colorize,
    colors_to_index,
    load_palette_file,
    voc_palette,
)


def reference_voc_color(index: int) -> tuple[int, int, int]:
    """The VOC devkit's bit-interleaving loop, written out one bit at a time."""
    r = g = b = 0
    c = index
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return r, g, b


def test_voc_palette_matches_bit_interleaving_rule():
    palette = voc_palette()
    assert len(palette) == 256
    assert palette == [reference_voc_color(i) for i in range(256)]
    assert palette[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert palette[15] == (192, 128, 128)  # person
    assert palette[255] == (224, 224, 192)  # the void border colour
    assert voc_palette(21) == palette[:21]
    with pytest.raises(ValueError, match="1..256"):
        voc_palette(0)


def test_cityscapes_table():
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[10] == (70, 130, 180)
    lut = cityscapes_id_to_train_id()
    assert (lut[7], lut[26], lut[0], lut[33], lut[9], lut[255]) == (0, 13, 255, 18, 255, 255)
    assert sorted(set(lut[:34].tolist()) - {255}) == list(range(19))


def test_colorize_round_trips_through_png(tmp_path):
    mask = np.array([[0, 1, 2], [255, 20, 0]], dtype=np.int64)
    path = tmp_path / "m.png"
    colorize(mask, voc_palette(21)).save(path)
    with Image.open(path) as image:
        assert image.mode == "P"
        np.testing.assert_array_equal(np.asarray(image), mask)
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 1]) == (128, 0, 0)
    assert tuple(rgb[1, 0]) == IGNORE_COLOR
    assert tuple(rgb[1, 1]) == voc_palette()[20]


def test_colorize_rejects_bad_input():
    with pytest.raises(ValueError, match="0..255"):
        colorize(np.array([[0, 300]]), voc_palette(3))
    with pytest.raises(ValueError, match="H x W"):
        colorize(np.zeros((2, 2, 3)), voc_palette(3))


def test_colors_to_index_inverts_colorize_and_marks_unknown():
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    mask = np.array([[0, 1], [2, 1]])
    rgb = np.asarray(colorize(mask, palette).convert("RGB")).copy()
    np.testing.assert_array_equal(colors_to_index(rgb, palette), mask)
    rgb[0, 0] = (1, 2, 3)
    assert colors_to_index(rgb, palette)[0, 0] == 255
    assert colors_to_index(rgb, [(0, 255, 0), (0, 255, 0)])[1, 0] == 0  # duplicate: first wins


def test_load_palette_file_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "classes.yaml"
    yaml_file.write_text(
        "background: [0, 0, 0]\nroad: '#ff8000'\nignore: [[224, 224, 192], [9, 9, 9]]\n"
    )
    spec = load_palette_file(yaml_file)
    assert spec.class_names == ["background", "road"]
    assert spec.colors == [(0, 0, 0), (255, 128, 0)]
    assert spec.ignore_colors == [(224, 224, 192), (9, 9, 9)]
    json_file = tmp_path / "classes.json"
    json_file.write_text(json.dumps({"sky": [0, 0, 255], "ground": [0, 255, 0]}))
    assert load_palette_file(json_file).class_names == ["sky", "ground"]
    json_file.write_text(json.dumps({"sky": [0, 0, 256]}))
    with pytest.raises(ValueError, match=r"classes.json.*'sky'.*\[0, 0, 256\]"):
        load_palette_file(json_file)
