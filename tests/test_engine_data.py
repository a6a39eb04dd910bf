"""Engine data: the digits loader, synthetic and ImageFolder sources, data order and sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from stitchkit.engine.data import DataConfig, DataSpec, EpochSeeded, build_data, split_indices
from stitchkit.core.errors import ConfigError



def _base(ds):
    return ds.base if isinstance(ds, EpochSeeded) else ds


@pytest.fixture(scope="module")
def digits():
    return build_data(DataConfig(img_size=8, augment=False))


def test_digits_shapes_classes_and_split_sizes(digits):
    n = 1797  # load_digits has 1797 images
    n_test, n_val = round(0.2 * n), round(0.1 * n)  # 359, 180
    assert (len(digits.train), len(digits.val), len(digits.test)) == (n - n_test - n_val, n_val, n_test)
    assert digits.spec == DataSpec(in_chans=1, img_size=8, num_classes=10)
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert {int(v) for v in _base(digits.test).labels} == set(range(10))


def test_digits_images_are_the_real_digits_in_disjoint_splits(digits):
    raw = load_digits()
    index = {}
    for i, img in enumerate(raw.images):
        index.setdefault((img / 16.0).astype(np.float32).tobytes(), []).append(i)
    owners = []
    for ds in (digits.train, digits.val, digits.test):
        ds = _base(ds)
        found = set()
        for img, label in zip(ds.images, ds.labels):
            candidates = index[img[0].numpy().tobytes()]  # KeyError: not a load_digits image
            assert int(label) in {int(raw.target[i]) for i in candidates}
            found.update(candidates)
        owners.append(found)
    # no load_digits image appears in two splits
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])


def test_split_indices_disjoint_stratified_and_seeded():
    labels = [i % 10 for i in range(1797)]
    tr, va, te = split_indices(labels, 0.1, 0.2, seed=3)
    assert len(set(tr) | set(va) | set(te)) == 1797 and len(tr) + len(va) + len(te) == 1797
    assert np.bincount(np.asarray(labels)[te]).min() >= 35  # stratified: ~36 of each class in 359
    again = split_indices(labels, 0.1, 0.2, seed=3)
    other = split_indices(labels, 0.1, 0.2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(te, other[2])


def test_digits_resize_and_three_channels():
    d = build_data(DataConfig(img_size=16, in_chans=3, augment=False))
    x, _ = d.val[0]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert d.spec == DataSpec(3, 16, 10)
    assert -1.0 <= x.min() and x.max() <= 1.0  # [0, 1] normalised with mean 0.5, std 0.5


def test_augmentation_is_a_shift_seeded_by_seed_epoch_index():
    d = build_data(DataConfig(img_size=16, max_shift=0.125))  # up to 2 pixels
    base = _base(d.train)
    clean = (base.images[5] - 0.5) / 0.5
    d.train.set_epoch(0, seed=1)
    a, b = d.train[5][0], d.train[5][0]
    assert torch.equal(a, b)  # same (seed, epoch, index): same image
    outs = []
    for epoch in range(6):
        d.train.set_epoch(epoch, seed=1)
        outs.append(d.train[5][0])
    assert len({o.numpy().tobytes() for o in outs}) > 1  # epochs differ
    # brute force: each augmented image is the clean one shifted by at most 2 pixels, zero filled
    bg = torch.full_like(clean, -1.0)
    for out in outs:
        matches = 0
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = bg.clone()
                src = clean[:, max(0, -dy): 16 - max(0, dy), max(0, -dx): 16 - max(0, dx)]
                shifted[:, max(0, dy): max(0, dy) + src.shape[1], max(0, dx): max(0, dx) + src.shape[2]] = src
                matches += torch.equal(shifted, out)
        assert matches >= 1
    # the global RNG is untouched by augmentation
    state = torch.get_rng_state()
    d.train[7]
    assert torch.equal(state, torch.get_rng_state())


def test_data_order_is_a_function_of_seed_and_epoch_and_shards_the_global_batch():
    d = build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=100, val_fraction=0.0, test_fraction=0.0, augment=False))
    one = [list(b[1]) for b in d.train_loader(8, epoch=2, seed=5)]
    again = [list(b[1]) for b in d.train_loader(8, epoch=2, seed=5)]
    assert one == again and len(one) == 100 // 8
    assert one != [list(b[1]) for b in d.train_loader(8, epoch=3, seed=5)]
    # two ranks with batch 4 each see exactly the images of the one-process batch of 8
    idx_one = list(d.train_sampler(2, 5, 0, 1))
    r0, r1 = list(d.train_sampler(2, 5, 0, 2)), list(d.train_sampler(2, 5, 1, 2))
    for k in range(100 // 8):
        assert sorted(idx_one[8 * k: 8 * k + 8]) == sorted(r0[4 * k: 4 * k + 4] + r1[4 * k: 4 * k + 4])
    assert d.steps_per_epoch(8, 1) == d.steps_per_epoch(8, 2) == 12
    # resuming mid-epoch skips whole batches without loading them
    skipped = [list(b[1]) for b in d.train_loader(8, epoch=2, seed=5, skip_batches=5)]
    assert skipped == one[5:]


def test_eval_loader_shards_cover_each_image_once():
    d = build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=50, val_fraction=0.2, test_fraction=0.2))
    n = len(d.val)
    got = sorted(i for r in range(3) for i in d.eval_loader("val", rank=r, world_size=3).sampler)
    assert got == list(range(n))


def test_synthetic_source_is_deterministic():
    cfg = DataConfig(source="synthetic", img_size=8, synthetic_samples=40, synthetic_classes=4)
    a, b = build_data(cfg), build_data(cfg)
    assert torch.equal(_base(a.train).images, _base(b.train).images)
    assert a.spec == DataSpec(1, 8, 4)


def test_imagefolder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    d = build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=16))
    assert d.spec == DataSpec(3, 16, 2)
    assert (len(d.train), len(d.val), len(d.test)) == (6, 4, 4)  # val/ is the test split too
    x, y = d.train[0]
    assert x.shape == (3, 16, 16) and y == 0
    d.train.set_epoch(1, seed=0)
    assert torch.equal(d.train[3][0], d.train[3][0])  # timm's random crop/flip, seeded per image
    xv, _ = d.val[0]
    assert xv.shape == (3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"source": "cifar10"}, ["data.source", "digits", "fashion-mnist"]),
        ({"in_chans": 2}, ["in_chans", "1 or 3"]),
        ({"source": "imagefolder", "in_chans": 3}, ["root"]),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, ["val_fraction + test_fraction"]),
        ({"source": "synthetic", "synthetic_samples": 40, "synthetic_classes": 10}, ["8 test images", "test_fraction"]),
    ],
)
def test_bad_data_config(kwargs, words):
    with pytest.raises(ConfigError) as info:
        build_data(DataConfig(**kwargs))
    assert all(w in str(info.value) for w in words)


def test_imagefolder_missing_dirs(tmp_path):
    with pytest.raises(ConfigError, match="train"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3))


def test_batches_do_not_depend_on_worker_processes():
    cfg = dict(source="synthetic", img_size=8, synthetic_samples=48, val_fraction=0.0, test_fraction=0.0, max_shift=0.25)
    a = build_data(DataConfig(**cfg, num_workers=0))
    b = build_data(DataConfig(**cfg, num_workers=2))
    for x, y in zip(a.train_loader(8, epoch=1, seed=2), b.train_loader(8, epoch=1, seed=2)):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_train_split_for_evaluation_is_not_augmented():
    d = build_data(DataConfig(source="synthetic", img_size=8, synthetic_samples=40, synthetic_classes=4, max_shift=0.25))
    clean = (_base(d.train).images - 0.5) / 0.5
    state = torch.get_rng_state()
    got = torch.cat([x for x, _ in d.eval_loader("train", batch_size=7)])
    assert torch.equal(got, clean) and torch.equal(state, torch.get_rng_state())
    with pytest.raises(ConfigError, match="unknown data split 'dev'"):
        d.eval_loader("dev")


def test_batched_fetch_is_the_per_image_draw():
    """The loader's batched fetch (one private generator) gives exactly the images a per-image
    ``torch.manual_seed(derive_seed("augment", seed, epoch, i)); base[i]`` gives, labels included."""
    from stitchkit.engine.data import derive_seed

    d = build_data(DataConfig(img_size=16, max_shift=0.25))  # shifts up to 4 pixels
    base = _base(d.train)
    d.train.set_epoch(3, seed=7)
    idx = [0, 5, 5, 17, len(base) - 1]
    state = torch.get_rng_state()
    got = d.train.__getitems__(idx)
    assert torch.equal(state, torch.get_rng_state())  # no global draw
    for i, (x, y) in zip(idx, got):
        torch.manual_seed(derive_seed("augment", 7, 3, i))
        ref_x, ref_y = base[i]
        assert torch.equal(x, ref_x) and y == ref_y
    batch = next(iter(d.train_loader(8, epoch=3, seed=7)))
    order = list(d.train_sampler(3, 7))[:8]
    assert torch.equal(batch[0], torch.stack([d.train[i][0] for i in order]))


# --------------------------------------------------------------------------- ImageFolder layouts, splits, transforms
def _folder(root, classes=("a", "b", "c"), n=10, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def _labels(ds):
    return sorted(int(ds[i][1]) for i in range(len(ds)))


def test_a_flat_class_folder_is_split_stratified_seeded_and_recorded(tmp_path):
    _folder(tmp_path, n=10)  # 30 images, 10 per class
    cfg = dict(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8, val_fraction=0.2, test_fraction=0.3)
    d = build_data(DataConfig(**cfg))
    # round(0.3 * 30) = 9 test, round(0.2 * 30) = 6 val, 15 train; stratified: 3 / 2 / 5 per class
    assert (len(d.train), len(d.val), len(d.test)) == (15, 6, 9)
    assert _labels(d.test) == [0] * 3 + [1] * 3 + [2] * 3 and _labels(d.val) == [0] * 2 + [1] * 2 + [2] * 2
    assert d.classes == ["a", "b", "c"] and d.spec == DataSpec(3, 8, 3)
    assert d.splits["val"] | {"sha256": None} == {"from": "root (split)", "images": 6, "fraction": 0.2, "seed": 0, "stratified": True, "sha256": None}
    assert d.splits["train"]["from"] == "root" and d.splits["train"]["images"] == 15
    # the splits are disjoint and cover the folder; the same seed gives the same split, another seed another
    members = [set(s.indices) for s in (d.train.base, d.val, d.test)]
    assert sum(map(len, members)) == 30 and len(set.union(*members)) == 30
    assert build_data(DataConfig(**cfg)).splits == d.splits
    assert build_data(DataConfig(**cfg, split_seed=1)).splits["test"]["sha256"] != d.splits["test"]["sha256"]


def test_imagefolder_layouts_decide_which_splits_are_made(tmp_path):
    _folder(tmp_path / "train", n=10)
    _folder(tmp_path / "val", n=2)
    d = build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8))
    assert (len(d.train), len(d.val), len(d.test)) == (30, 6, 6) and d.test is d.val  # ImageNet layout: val/ is the test split too
    assert d.splits["test"]["from"] == "val/ (also the test split)"
    with pytest.raises(ConfigError, match=r"data.test_fraction does not apply: .* has val/ \(it is also the test split\)"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8, test_fraction=0.3))
    with pytest.raises(ConfigError, match=r"data.val_fraction does not apply: .* has val/"):
        build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8, val_fraction=0.3))
    (tmp_path / "val").rename(tmp_path / "test")  # train/ + test/: val is split off train/
    d = build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8, val_fraction=0.2))
    assert (len(d.train), len(d.val), len(d.test)) == (24, 6, 6) and d.splits["val"]["from"] == "train/ (split)"


def test_a_class_mismatch_names_the_differing_classes(tmp_path):
    _folder(tmp_path / "train", classes=("cat", "dog", "eel", "fox", "gnu", "hen"), n=2)
    _folder(tmp_path / "val", classes=("cat", "dog", "eel", "fox", "gnu", "owl"), n=1)
    with pytest.raises(ConfigError) as err:
        build_data(DataConfig(source="imagefolder", root=str(tmp_path), in_chans=3, img_size=8))
    assert "train/ has ['hen'] that val/ lacks; val/ has ['owl'] that train/ lacks" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"source": "digits", "root": "/data"}, ["data.root", "does not apply to source 'digits'"]),
        ({"source": "digits", "transform": {"hflip": 0.0}}, ["data.transform", "only to imagefolder"]),
        ({"source": "imagefolder", "root": "/x", "in_chans": 3, "max_shift": 0.2}, ["data.max_shift", "only to digits / synthetic"]),
        ({"source": "digits", "synthetic_classes": 4}, ["data.synthetic_classes"]),
        ({"source": "imagefolder", "root": "/x", "in_chans": 3, "transform": {"scale": [0.5, 2.0]}}, ["data.transform.scale", "at most 1.0"]),
        ({"source": "imagefolder", "root": "/x", "in_chans": 3, "transform": {"interpolation": "cubic"}}, ["data.transform.interpolation", "bicubic"]),
        ({"source": "imagefolder", "root": "/x", "in_chans": 3, "transform": {"auto_augment": "bogus"}}, ["data.transform.auto_augment", "bogus"]),
        ({"source": "imagefolder", "root": "/x", "in_chans": 3, "transform": {"hlfip": 0.0}}, ["data.transform", "'hflip'"]),
    ],
)
def test_options_that_do_not_apply_or_are_wrong_are_refused(kwargs, words):
    from stitchkit.engine.config import from_mapping

    with pytest.raises(ConfigError) as info:
        from_mapping(DataConfig, kwargs, "data")
    assert all(w in str(info.value) for w in words), str(info.value)


def test_transform_defaults_depend_on_the_image_size():
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    from stitchkit.engine.transforms import TransformConfig, create_train_transform, preprocessing
    from stitchkit.io.preprocessing import eval_transform

    cfg = TransformConfig()
    for size, scale, resize in ((32, (0.5, 1.0), 32), (64, (0.5, 1.0), 64), (224, (0.08, 1.0), 256)):  # 224 / 0.875 = 256
        pre = preprocessing(cfg, size)
        crop = next(t for t in create_train_transform(cfg, pre).transforms if isinstance(t, RandomResizedCropAndInterpolation))
        assert crop.scale == scale and crop.size == (size, size)
        ev = eval_transform(pre).transforms[1:]  # [0] converts the image to the model's channels
        assert isinstance(ev[0], T.Resize) and ev[0].size == resize and ev[1].size == (size, size)
    assert preprocessing(cfg, 32) == {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                      "std": [0.229, 0.224, 0.225], "crop_pct": 1.0, "crop_mode": "center"}
    mine = TransformConfig(scale=[0.9, 1.0], crop_pct=0.5, mean=[0.5], std=[0.25], interpolation="bicubic")
    assert preprocessing(mine, 32, 1)["crop_pct"] == 0.5
    ev = eval_transform(preprocessing(mine, 32, 1)).transforms[1:]
    assert ev[0].size == 64 and ev[-1].mean.tolist() == [0.5] and ev[-1].std.tolist() == [0.25]
