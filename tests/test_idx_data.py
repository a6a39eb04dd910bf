"""The fashion-mnist / mnist sources: small idx files written here, read back exactly, and checked."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np
import pytest
import torch

from stitchkit.core.errors import ConfigError
from stitchkit.engine.data import DataConfig, EpochSeeded, build_data
from stitchkit.engine.idx import CLASSES


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """The idx encoding written out by hand: magic, big-endian dims, the bytes."""
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def write_set(root: pathlib.Path, n_train: int = 60, n_test: int = 20, size: int = 6, *, gz: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        payload = idx_bytes(a, 0x803 if "images" in stem else 0x801)
        (root / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(payload) if gz else payload)
    return arrays


def cfg(root: pathlib.Path, **kw) -> DataConfig:
    base = dict(source="fashion-mnist", root=str(root), img_size=6, in_chans=1, val_fraction=0.2, augment=False)
    return DataConfig(**{**base, **kw})


def images_of(ds) -> tuple[np.ndarray, np.ndarray]:
    ds = ds.base if isinstance(ds, EpochSeeded) else ds
    return (ds.images[:, 0].numpy() * 255).round().astype(np.int64), ds.labels.numpy()


@pytest.mark.parametrize("gz", [True, False])
def test_the_official_test_split_and_a_stratified_val_split_off_train(tmp_path, gz):
    arrays = write_set(tmp_path, gz=gz)
    data = build_data(cfg(tmp_path, val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 20)  # round(0.25 * 60) val images
    test_x, test_y = images_of(data.test)
    assert np.array_equal(test_x, arrays["t10k-images-idx3-ubyte"]) and np.array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])
    # train and val together are the training files' images, each once, with their labels
    seen = []
    for ds in (data.train, data.val):
        x, y = images_of(ds)
        for img, label in zip(x, y):
            (i,) = [k for k, ref in enumerate(arrays["train-images-idx3-ubyte"]) if np.array_equal(ref, img)]
            assert label == arrays["train-labels-idx1-ubyte"][i]
            seen.append(i)
    assert sorted(seen) == list(range(60))
    assert set(images_of(data.val)[1].tolist()) == set(range(10))  # stratified: every class in 15 val images
    assert data.classes == CLASSES["fashion-mnist"] and data.classes[9] == "Ankle boot"
    assert data.spec.num_classes == 10 and data.spec.input_size == (1, 6, 6)
    assert "official test split" in data.splits["test"]["from"] and data.splits["test"]["images"] == 20


def test_torchvision_layout_and_the_mnist_name(tmp_path):
    write_set(tmp_path / "MNIST" / "raw", gz=False)
    data = build_data(cfg(tmp_path, source="mnist"))
    assert len(data.test) == 20 and data.classes == [str(i) for i in range(10)]
    with pytest.raises(ConfigError, match="mnist source needs root"):
        build_data(DataConfig(source="mnist", img_size=28))


def test_a_training_subset_is_stratified_seeded_and_recorded(tmp_path):
    write_set(tmp_path, n_train=200)
    full = build_data(cfg(tmp_path))
    sub = build_data(cfg(tmp_path, train_images=50))
    again = build_data(cfg(tmp_path, train_images=50))
    other = build_data(cfg(tmp_path, train_images=50, split_seed=1))
    x, y = images_of(sub.train)
    assert len(sub.train) == 50 and np.bincount(y, minlength=10).tolist() == [5] * 10  # 5 of each of the 10 classes
    assert np.array_equal(x, images_of(again.train)[0]) and not np.array_equal(x, images_of(other.train)[0])
    full_x = {img.tobytes() for img in images_of(full.train)[0]}
    assert all(img.tobytes() in full_x for img in x)  # a subset of the training split, never val or test
    assert np.array_equal(images_of(sub.val)[0], images_of(full.val)[0]) and len(sub.test) == 20
    assert sub.splits["train"] | {} == {**sub.splits["train"], "images": 50, "subset_of": 160, "seed": 0, "stratified": True}
    with pytest.raises(ConfigError, match="train_images = 500 but the training split has 160"):
        build_data(cfg(tmp_path, train_images=500))
    digits = build_data(DataConfig(img_size=8, augment=False, train_images=100))  # every in-memory source takes it
    assert len(digits.train) == 100


def test_resize_and_three_channels(tmp_path):
    write_set(tmp_path)
    data = build_data(cfg(tmp_path, img_size=12, in_chans=3))
    x, _ = data.test[0]
    assert x.shape == (3, 12, 12) and torch.equal(x[0], x[2])


def corrupt(path: pathlib.Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


@pytest.mark.parametrize("damage, words", [
    (lambda r: (r / "t10k-labels-idx1-ubyte.gz").unlink(), ["t10k-labels-idx1-ubyte.gz not found", "apt-get install dataset-fashion-mnist"]),
    (lambda r: corrupt(r / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros(60), 0x801)), ["train-images-idx3-ubyte.gz is not an idx file of images", "0x801"]),
    (lambda r: corrupt(r / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((60, 6, 6)), 0x803)[:-7]), ["train-images-idx3-ubyte.gz holds 2169 bytes", "needs 2176"]),
    (lambda r: (r / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage"), ["cannot read", "t10k-images-idx3-ubyte.gz", "damaged"]),
    (lambda r: corrupt(r / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(59) % 10, 0x801)), ["has 60 images but", "has 59 labels"]),
    (lambda r: corrupt(r / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.full(20, 12), 0x801)), ["label 12 at index 0, outside 0..9"]),
    (lambda r: corrupt(r / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((20, 5, 5)), 0x803)), ["training images are (6, 6) but test images (5, 5)"]),
])
def test_a_missing_or_damaged_file_is_one_line_naming_it(tmp_path, damage, words):
    write_set(tmp_path)
    damage(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_data(cfg(tmp_path))
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("kwargs, words", [
    (dict(test_fraction=0.3), ["test_fraction", "does not apply to source 'fashion-mnist'"]),
    (dict(train_images=-1), ["train_images must be >= 0"]),
    (dict(root="/nonexistent/fm"), ["/nonexistent/fm is not a directory", "apt-get install dataset-fashion-mnist"]),
])
def test_bad_options_are_refused(kwargs, words):
    with pytest.raises(ConfigError) as info:
        build_data(DataConfig(source="fashion-mnist", img_size=28, **kwargs))
    assert all(w in str(info.value) for w in words), str(info.value)
