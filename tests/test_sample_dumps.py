"""`softintrovae sample --format npz|png`: many samples as uint8 images for FID tools; the grid stays the default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import softintrovae
from softintrovae.cli import main
from softintrovae.dumps import BLOCK, dump_samples, prior_latents

from .conftest import TINY, tiny_image

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional (3 classes) and an unconditional tiny image run, trained a few steps."""
    folder = tmp_path_factory.mktemp("dumps")
    rng = np.random.default_rng(0)
    npz = folder / "images.npz"
    np.savez(npz, images=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8), labels=np.arange(40) % 3)
    conditional = softintrovae.train("npz", out=folder / "conditional", overrides=tiny_image(npz, train__steps=3, model__conditional=True))
    plain = softintrovae.train("npz", out=folder / "plain", overrides=tiny_image(npz, train__steps=3))
    return {"conditional": conditional.run_dir, "plain": plain.run_dir}


def dump(run, out, *extra) -> dict[str, np.ndarray]:
    assert main(["sample", str(run), "--format", "npz", "--out", str(out), *extra]) == 0
    return dict(np.load(out))


def test_npz_dump_has_the_count_dtype_range_and_balanced_classes(runs, tmp_path):
    n = BLOCK + 76  # more than one block of latents, and not a multiple of the batch size
    found = dump(runs["conditional"], tmp_path / "s.npz", "--n", str(n), "--seed", "3", "--batch-size", "300")
    assert set(found) == {"images", "labels"}
    images, labels = found["images"], found["labels"]
    assert images.shape == (n, 8, 8, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [367, 367, 366]  # 0, 1, 2, 0, ...: balanced to within one
    assert np.array_equal(labels[:6], [0, 1, 2, 0, 1, 2])
    # the images are the decoder's outputs of the seed's latents, clamped to [0, 1] and rounded to 0..255
    model = softintrovae.load(runs["conditional"])
    decoded = model.decode(prior_latents(3, 0, n, model.latents.z_dim), torch.from_numpy(labels))
    expected = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(images, expected)
    assert decoded.min() < 0 and images.min() == 0  # outputs below 0 are clamped, not wrapped around
    assert len(np.unique(images)) > 10  # not a constant dump


def test_dumps_are_reproducible_with_the_seed_whatever_the_batch_size(runs, tmp_path):
    run = runs["plain"]
    first = dump(run, tmp_path / "a.npz", "--n", "40", "--seed", "7", "--batch-size", "16")
    again = dump(run, tmp_path / "b.npz", "--n", "40", "--seed", "7", "--batch-size", "40")
    other = dump(run, tmp_path / "c.npz", "--n", "40", "--seed", "8")
    assert set(first) == {"images"}  # unconditional: no labels
    assert np.array_equal(first["images"], again["images"])
    assert not np.array_equal(first["images"], other["images"])
    shorter = dump(run, tmp_path / "d.npz", "--n", "25", "--seed", "7")
    assert np.array_equal(shorter["images"], first["images"][:25])  # sample i depends only on (seed, i)


def test_latents_do_not_depend_on_how_the_samples_are_batched():
    whole = prior_latents(5, 0, 2 * BLOCK + 10, 3)
    assert whole.shape == (2 * BLOCK + 10, 3)
    assert torch.equal(prior_latents(5, BLOCK - 4, BLOCK + 6, 3), whole[BLOCK - 4 : BLOCK + 6])
    assert torch.equal(prior_latents(5, 2 * BLOCK, 2 * BLOCK + 10, 3), whole[2 * BLOCK :])


def test_png_dump_is_a_folder_of_numbered_images_equal_to_the_npz(runs, tmp_path, capsys):
    run, out = runs["conditional"], tmp_path / "pngs"
    assert main(["sample", str(run), "--n", "12", "--format", "png", "--out", str(out), "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"{i:06d}.png" for i in range(12)] + ["labels.txt"]
    pngs = np.stack([np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(12)])
    found = dump(run, tmp_path / "same.npz", "--n", "12", "--seed", "1")
    assert np.array_equal(pngs, found["images"])
    assert (out / "labels.txt").read_text().split() == [str(c) for c in found["labels"]]


def test_default_paths_and_the_grid(runs, capsys):
    run = runs["plain"]
    assert main(["sample", str(run), "-n", "4"]) == 0  # no --format: today's grid picture
    assert main(["sample", str(run), "-n", "4", "--grid", "--seed", "1"]) == 0
    assert main(["sample", str(run), "--n", "5", "--format", "npz"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[0] == printed[1] == str(run / "pictures" / "samples_step0000003.png")
    assert printed[2] == str(run / "samples" / "n5_seed0_step0000003.npz")
    assert np.load(printed[2])["images"].shape == (5, 8, 8, 3)
    assert dump_samples(run, 2, format="png", progress=False) == run / "samples" / "n2_seed0_step0000003"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "npz", "--grid"], "give one of them"),
        (["--format", "tiff"], "--format must be one of npz, png, got 'tiff'"),
        (["--format", "npz", "--out", "{tmp}/samples.zip"], "must end in .npz"),
        (["--format", "png", "--out", "{tmp}/full"], "is not an empty folder"),
        (["--format", "npz", "--n", "0"], "must be an integer >= 1, got 0"),
        (["--format", "npz", "--batch-size", "0"], "must be an integer >= 1, got 0"),
        (["--format", "npz", "--run", "{tmp}/run2d"], "is a 2D run"),
    ],
)
def test_bad_dump_requests_are_one_line(runs, tmp_path, capsys, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "000000.png").write_bytes(b"")
    run = runs["plain"]
    if "--run" in args:
        sets = [a for k, v in {**TINY, "train.steps": 2}.items() for a in ("--set", f"{k}={v}")]
        assert main(["train", "vae-8gaussians", "--out", str(tmp_path / "run2d"), *sets]) == 0
        run, args = tmp_path / "run2d", args[:-2]
    capsys.readouterr()
    assert main(["sample", str(run), *[a.format(tmp=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
