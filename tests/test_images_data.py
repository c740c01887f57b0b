"""Offline image sources (IDX, digits, image folders, npz, torchvision) and the resumable ImageStream."""

from __future__ import annotations

import gzip
import sys
from itertools import islice
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from softintrovae.data import images as image_data
from softintrovae.data.images import (
    ImageStream,
    load_digits_28,
    load_image_folder,
    load_mnist_family,
    load_npz,
    load_torchvision,
    read_idx,
)
from softintrovae.errors import UserError

from .conftest import DEBIAN_FASHION_MNIST, MNIST, idx_bytes, write_idx, write_mnist_files

# --- IDX files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trips_every_type_and_byte_order(tmp_path, dtype, compress):
    values = np.arange(24).reshape(2, 3, 4)
    array = values.astype(dtype) if dtype == np.uint8 else (values * 7 - 20).astype(dtype)  # negatives test the sign
    back = read_idx(write_idx(tmp_path / "a.idx.gz", array, compress))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative and back.flags.writeable
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5])), "holds 59 bytes"),
        (lambda p: p.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4), np.uint8)))[:-9]), "gzip"),
        (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00")), "header"),
        (lambda p: p.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + bytes(40))), "magic"),
        (lambda p: p.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05"), "magic"),
        (lambda p: None, "not found"),
    ],
    ids=["truncated-data", "truncated-gzip", "truncated-header", "wrong-magic", "unknown-type", "missing"],
)
def test_bad_idx_files_are_one_line_user_errors_naming_the_file(tmp_path, make, problem):
    path = tmp_path / "broken-idx3-ubyte.gz"
    make(path)
    with pytest.raises(UserError, match=problem) as info:
        read_idx(path)
    assert "broken-idx3-ubyte.gz" in str(info.value) and "\n" not in str(info.value)


# --- MNIST family ---------------------------------------------------------------------------------


def test_mnist_family_reads_train_and_test_splits_from_a_root(tmp_path):
    train_images, train_labels = write_mnist_files(tmp_path, "train", 5)
    write_mnist_files(tmp_path, "t10k", 3, seed=1)
    images, labels = load_mnist_family("mnist", tmp_path)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images[:, 0].numpy(), train_images)
    np.testing.assert_array_equal(labels.numpy(), train_labels)
    images, labels = load_mnist_family("fashion-mnist", str(tmp_path), split="test")
    assert images.shape == (3, 1, 28, 28) and labels.shape == (3,)


def test_mnist_family_reads_the_folder_torchvision_downloaded_to(tmp_path):
    for folder in ("MNIST", "FashionMNIST"):
        (tmp_path / folder / "raw").mkdir(parents=True)
        expected, _ = write_mnist_files(tmp_path / folder / "raw", "train", 4, seed=len(folder))
        name = "mnist" if folder == "MNIST" else "fashion-mnist"
        np.testing.assert_array_equal(load_mnist_family(name, tmp_path)[0][:, 0].numpy(), expected)


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST is not in ../shared/data/mnist")
def test_the_canonical_mnist():
    images, labels = load_mnist_family("mnist", MNIST)
    assert images.shape == (60000, 1, 28, 28) and torch.equal(labels.bincount(), torch.tensor([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]))
    assert load_mnist_family("mnist", MNIST, "test")[0].shape == (10000, 1, 28, 28)


def test_mnist_family_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="'cifar'"):
        load_mnist_family("cifar", tmp_path)
    with pytest.raises(UserError, match="'valid'"):
        load_mnist_family("mnist", tmp_path, split="valid")
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_mnist_family("mnist", tmp_path)  # an empty root
    write_mnist_files(tmp_path, "train", 4)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="do not match"):
        load_mnist_family("mnist", tmp_path)
    monkeypatch.setitem(image_data.MNIST_FAMILY_DEFAULT_ROOTS, "mnist", tmp_path / "nowhere")
    with pytest.raises(UserError, match="nowhere.*data.root") as info:
        load_mnist_family("mnist")
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_is_found_in_debians_location():
    images, labels = load_mnist_family("fashion-mnist")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.unique(), torch.arange(10))


# --- sklearn digits -------------------------------------------------------------------------------


def fake_sklearn(monkeypatch, digit_images: np.ndarray) -> None:
    """Stand-in sklearn.datasets.load_digits (sklearn is optional and absent from the test machine)."""
    datasets = ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: SimpleNamespace(images=digit_images, target=np.arange(len(digit_images)))
    monkeypatch.setitem(sys.modules, "sklearn", ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)


def test_digits_are_rescaled_to_0_255_and_resized_to_28(monkeypatch):
    fake_sklearn(monkeypatch, np.stack([np.zeros((8, 8)), np.full((8, 8), 16.0), np.full((8, 8), 12.0)]))
    images, labels = load_digits_28()
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.uint8
    assert (images[0] == 0).all() and (images[1] == 255).all() and (images[2] == 191).all()  # 12 · 255/16 = 191.25
    assert torch.equal(labels, torch.arange(3))


def test_digits_without_sklearn_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # both: another test may have imported them already
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(UserError, match="pip install scikit-learn"):
        load_digits_28()


def test_real_sklearn_digits():
    pytest.importorskip("sklearn")
    images, labels = load_digits_28()
    assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.unique(), torch.arange(10)) and images.max() > 200


# --- image folders --------------------------------------------------------------------------------


def save_image(path: Path, width: int, height: int, mode: str = "RGB", value: int = 200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height), value if mode == "L" else (value, 10, 50)).save(path)


def test_image_folder_with_class_sub_folders_gives_square_crops_and_sorted_labels(tmp_path):
    save_image(tmp_path / "dog" / "c.PNG", 8, 8, mode="L")
    save_image(tmp_path / "cat" / "a.png", 10, 20)
    save_image(tmp_path / "cat" / "b.jpg", 30, 15)
    save_image(tmp_path / "dog" / "d.JPEG", 9, 40, mode="L")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    images, labels = load_image_folder(tmp_path, size=8)
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1]  # cat/a, cat/b, dog/c, dog/d
    assert images[0, :, 4, 4].tolist() == [200, 10, 50]  # RGB kept, channels first
    grey, _ = load_image_folder(tmp_path, size=6, channels=1)
    assert grey.shape == (4, 1, 6, 6) and grey[2].eq(200).all()


def test_image_folder_crops_the_centre_after_resizing_the_short_side(tmp_path):
    stripes = np.zeros((8, 16), np.uint8)
    stripes[:, 4:12] = 255  # the central 8 columns of a 16×8 image
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    images, labels = load_image_folder(tmp_path, size=4, channels=1)
    assert labels is None
    assert images.shape == (1, 1, 4, 4) and images.min() > 200  # only the bright centre survives


def test_image_folder_without_class_sub_folders_has_no_labels(tmp_path):
    save_image(tmp_path / "top.png", 5, 5)
    save_image(tmp_path / "deeper" / "inside" / "x.png", 5, 5)
    images, labels = load_image_folder(tmp_path, size=4)
    assert images.shape == (2, 3, 4, 4) and labels is None


def test_image_folder_errors_name_the_file_or_folder(tmp_path):
    with pytest.raises(UserError, match="no .png"):
        load_image_folder(tmp_path, size=8)
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size=8)
    save_image(tmp_path / "a" / "fine.png", 8, 8)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="broken.jpg") as info:
        load_image_folder(tmp_path, size=8)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="channels must be 1 or 3"):
        load_image_folder(tmp_path, size=8, channels=4)


# --- npz ------------------------------------------------------------------------------------------


def test_npz_accepts_nhwc_nchw_nhw_and_float_images(tmp_path):
    nchw = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", images=nchw.transpose(0, 2, 3, 1), labels=np.array([1, 0]))
    np.savez(tmp_path / "nchw.npz", x=nchw, y=np.array([1, 0], np.uint8))
    np.savez_compressed(tmp_path / "nhw.npz", train=nchw[:, 0])
    np.savez(tmp_path / "float.npz", images=np.tile(np.array([0.0, 0.2, 1.0], np.float32), (1, 2, 2, 1)))  # NHWC
    for name in ("nhwc", "nchw"):
        images, labels = load_npz(tmp_path / f"{name}.npz")
        assert torch.equal(images, torch.from_numpy(nchw)) and labels.tolist() == [1, 0], name
        assert labels.dtype == torch.int64
    images, labels = load_npz(tmp_path / "nhw.npz", key="train")
    assert torch.equal(images, torch.from_numpy(nchw[:, :1])) and labels is None
    images, _ = load_npz(tmp_path / "float.npz")
    assert images.shape == (1, 3, 2, 2) and images[0, :, 1, 1].tolist() == [0, 51, 255]


@pytest.mark.parametrize(
    "write, problem",
    [
        (lambda p: np.savez(p, images=np.zeros((2, 5, 5, 4), np.uint8)), "C 1 or 3"),
        (lambda p: np.savez(p, images=np.zeros((2, 5), np.uint8)), "got \\(2, 5\\)"),
        (lambda p: np.savez(p, images=np.zeros((2, 5, 5), np.int64)), "int64"),
        (lambda p: np.savez(p, images=np.full((2, 5, 5), 2.0)), r"\[0, 1\]"),
        (lambda p: np.savez(p, images=np.zeros((2, 5, 5), np.uint8), labels=np.zeros(3, int)), "2 non-negative"),
        (lambda p: np.savez(p, pictures=np.zeros((2, 5, 5), np.uint8)), "images or x"),
        (lambda p: p.write_bytes(b"PK\x03\x04 a broken zip"), "archive"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy").rename(p), "archive"),
        (lambda p: None, "not found"),
    ],
    ids=["channels", "ndim", "dtype", "range", "labels", "key", "corrupt", "npy", "missing"],
)
def test_bad_npz_files_are_one_line_user_errors(tmp_path, write, problem):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(UserError, match=problem) as info:
        load_npz(path)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)


# --- torchvision ----------------------------------------------------------------------------------


def test_torchvision_datasets_without_torchvision_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(UserError, match=r"cifar10.*needs torchvision: pip install 'softintrovae\[vision\]'"):
        load_torchvision("cifar10", tmp_path, "train")
    with pytest.raises(UserError, match="'mnist'"):
        load_torchvision("mnist", tmp_path, "train")
    with pytest.raises(UserError, match="'valid'"):
        load_torchvision("svhn", tmp_path, "valid")


# --- ImageStream ----------------------------------------------------------------------------------


def numbered_images(count: int = 10) -> torch.Tensor:
    """(count, 1, 2, 2) uint8 images whose pixels hold their own index, so a batch names its images."""
    return torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2).contiguous()


def image_ids(x: torch.Tensor) -> list[int]:
    """Which numbered_images a batch holds."""
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def test_stream_batches_are_floats_in_0_1_with_matching_labels():
    labels = torch.arange(10) % 3
    stream = ImageStream(numbered_images(), labels, batch_size=4, seed=1)
    x, y = stream.batch(0)
    assert x.dtype == torch.float32 and x.shape == (4, 1, 2, 2) and 0 <= x.min() and x.max() <= 1
    assert y.tolist() == [i % 3 for i in image_ids(x)]
    assert stream.input_shape == (1, 2, 2) and stream.num_classes == 3 and stream.steps_per_epoch == 2
    unlabelled = ImageStream(numbered_images(), None, batch_size=4)
    assert unlabelled.batch(0)[1] is None and unlabelled.num_classes == 0


@pytest.mark.parametrize("drop_last, steps, seen", [(True, 3, 9), (False, 4, 10)])
def test_every_image_once_per_epoch_and_a_new_order_each_epoch(drop_last, steps, seen):
    stream = ImageStream(numbered_images(), None, batch_size=3, seed=5, drop_last=drop_last)
    assert stream.steps_per_epoch == steps
    batches = [image_ids(stream.batch(step)[0]) for step in range(3 * steps)]
    epochs = [sum(batches[e * steps : (e + 1) * steps], []) for e in range(3)]
    for order in epochs:
        assert len(order) == len(set(order)) == seen
    assert epochs[0] != epochs[1] != epochs[2]


def test_resuming_at_any_step_reproduces_the_same_batches():
    images, labels = numbered_images(), torch.arange(10) % 2
    first = ImageStream(images, labels, batch_size=3, seed=7)
    reference = list(islice(first.batches(), 12))
    for start in (0, 4, 5, 11):
        resumed = ImageStream(images, labels, batch_size=3, seed=7).batches(start_step=start)
        for (x, y), (x_ref, y_ref) in zip(resumed, reference[start:]):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    assert first.batch(3)[0].tolist() == reference[3][0].tolist()  # going back an epoch is exact too
    other_seed = ImageStream(images, labels, batch_size=3, seed=8)
    assert [image_ids(other_seed.batch(s)[0]) for s in range(3)] != [image_ids(b[0]) for b in reference[:3]]


def test_stream_sample_and_errors():
    stream = ImageStream(numbered_images(), None, batch_size=2)
    assert sorted(image_ids(stream.sample(10, torch.Generator().manual_seed(0)))) == list(range(10))
    assert stream.sample(25, torch.Generator().manual_seed(0)).shape == (25, 1, 2, 2)
    with pytest.raises(UserError, match="larger than the dataset"):
        ImageStream(numbered_images(3), None, batch_size=4)
    with pytest.raises(UserError, match="uint8"):
        ImageStream(numbered_images().float(), None, batch_size=2)
    with pytest.raises(UserError, match="labels must have shape"):
        ImageStream(numbered_images(), torch.zeros(3, dtype=torch.int64), batch_size=2)
