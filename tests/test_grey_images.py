"""Grey (in_chans = 1) ImageFolder data, and transforms that take grey and colour image files alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stitchkit.engine.data import DataConfig, EpochSeeded, build_data
from stitchkit.io.preprocessing import attach, eval_transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_folder(root, size=8):
    """Two classes; class a grey PNGs of value 40 * k, class b RGB PNGs of (200, 100, 50)."""
    for k in range(1, 6):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "b").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size), 40 * k, np.uint8), "L").save(root / "a" / f"{k}.png")
        Image.fromarray(np.tile(np.array([200, 100, 50], np.uint8), (size, size, 1)), "RGB").save(root / "b" / f"{k}.png")


@pytest.mark.parametrize("augment", [False, True])
def test_a_grey_imagefolder_gives_one_channel(tmp_path, augment):
    write_folder(tmp_path)
    data = build_data(DataConfig(source="imagefolder", root=str(tmp_path), img_size=8, in_chans=1,
                                 val_fraction=0.2, test_fraction=0.2, augment=augment))
    assert data.spec.input_size == (1, 8, 8) and data.preprocessing["input_size"] == [1, 8, 8]
    mean, std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3  # one value for one channel
    assert data.preprocessing["mean"] == [mean] and data.preprocessing["std"] == [std]
    # every image, grey or colour on disk, is one grey channel; evaluation pixels are (v / 255 - mean) / std
    for ds in (data.val, data.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (1, 8, 8)
            if y == 1:  # RGB (200, 100, 50) in ITU-R 601 luma: 0.299 * 200 + 0.587 * 100 + 0.114 * 50 = 124.2
                assert torch.allclose(x, torch.full_like(x, (124 / 255 - mean) / std), atol=1e-5)
    x, _ = data.train[0]
    assert x.shape == (1, 8, 8)
    # without augmentation nothing is drawn per image, so nothing is seeded per image either
    assert isinstance(data.train, EpochSeeded) == augment


def test_the_exported_transform_takes_grey_and_colour_files():
    grey = Image.fromarray(np.full((8, 8), 120, np.uint8), "L")
    colour = Image.fromarray(np.tile(np.array([200, 100, 50], np.uint8), (8, 8, 1)), "RGB")
    for chans in (1, 3):
        pre = {"input_size": [chans, 8, 8], "interpolation": "bilinear", "mean": [0.5] * chans, "std": [0.5] * chans,
               "crop_pct": 1.0, "crop_mode": "center"}
        model = attach(torch.nn.Identity(), {"preprocessing": pre, "classes": ["a", "b"]})
        g, c = model.transform(grey), model.transform(colour)
        assert g.shape == c.shape == (chans, 8, 8)
        assert torch.allclose(g, torch.full_like(g, (120 / 255 - 0.5) / 0.5), atol=1e-6)  # grey repeated on 3 channels
        if chans == 3:
            assert torch.allclose(c[0], torch.full_like(c[0], (200 / 255 - 0.5) / 0.5), atol=1e-6)
        else:
            assert torch.allclose(c, torch.full_like(c, (124 / 255 - 0.5) / 0.5), atol=1e-6)
        assert repr(eval_transform(pre).transforms[0]) == f"ToChannels(mode={'L' if chans == 1 else 'RGB'!r})"
