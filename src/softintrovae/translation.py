"""Content transfer with a trained translation model (paper §6.4, §9.4.3, Table 4, Figure 7).

Transfer of (A, B): encode both images and decode the *class* latent of A with the *content* latent
of B (their means, as for reconstructions); the result should show A's object in B's pose. On a
dataset with pose labels (the rendered objects, Cars3D with its azimuth/elevation) the right answer
is the image of A's class in B's pose, so the transfer error is measured against it, on held-out
classes: MSE per pixel and SSIM (torchmetrics), and LPIPS when its backbone's weights are present
locally (they cannot be downloaded here; the metric is skipped with a note otherwise).

Two trivial answers bound what the numbers mean: returning B itself ("copy content": right pose,
wrong object) and returning A itself ("copy class": right object, wrong pose). A model that has not
separated class from content does no better than these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import as_trained
from .data.rendered import TranslationSet
from .data.translation import load_translation_set
from .errors import UserError, warn
from .pictures import pick_images, picture_path
from .files import save_figure
from .plots import tile_images  # importing plots selects the file-only Agg backend
from .models import eval_mode, latents_of
from .objectives import kl_to_standard_normal
from .checkpoint import TrainedModel
from .config import Config
from .files import atomic_write_text, check_writable
from .rundir import RunDir

CHUNK = 256  # images per forward pass


def latent_parts(encoder: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(content μ, class μ) of images x under a two-latent encoder (latents named content, class)."""
    latents = latents_of(encoder)
    if latents.names != ("content", "class"):
        raise UserError("content transfer needs a translation model (model.arch translation): this run has one latent")
    mu, _ = encoder(x)
    content, class_ = latents.split(mu)
    return content, class_


def transfer(encoder: nn.Module, decoder: nn.Module, class_images: Tensor, content_images: Tensor) -> Tensor:
    """decode(class of class_images[i], content of content_images[i]) for each i, in [0, 1]; (N, C, H, W)."""
    if class_images.shape != content_images.shape:
        raise UserError(f"class and content images must have the same shape, got {tuple(class_images.shape)} and {tuple(content_images.shape)}")
    device = next(decoder.parameters()).device
    out = []
    with eval_mode(encoder, decoder):
        for a, b in zip(class_images.split(CHUNK), content_images.split(CHUNK)):
            _, class_latent = latent_parts(encoder, a.to(device))
            content_latent, _ = latent_parts(encoder, b.to(device))
            out.append(decoder(torch.cat([content_latent, class_latent], dim=1)).float().clamp(0, 1).cpu())
    return torch.cat(out)


def transfer_matrix(encoder: nn.Module, decoder: nn.Module, class_images: Tensor, content_images: Tensor) -> Tensor:
    """(R, C, channels, H, W): row r takes the class of class_images[r], column c the content of content_images[c]."""
    rows, columns = len(class_images), len(content_images)
    a = class_images.repeat_interleave(columns, dim=0)
    b = content_images.repeat(rows, 1, 1, 1)
    return transfer(encoder, decoder, a, b).view(rows, columns, *class_images.shape[1:])


# ---- how much each latent carries --------------------------------------------------------------------

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2016): a latent unit is active when Var_x E[z_d | x] > 0.01


def latent_usage(encoder: nn.Module, images: Tensor) -> dict[str, dict[str, float]]:
    """Per latent (content, class) over ``images``: the mean KL to the prior in nats, the part of it that
    is a shift shared by all images (``kl_offset`` = ½‖E_x μ(x)‖², which tells the decoder nothing about
    x), and the number of active units (dimensions whose posterior mean varies across images).

    A posterior can be far from the prior (KL well above 0) and still carry little about x when most
    of its KL is offset or sits in few units; this is what separates a latent that is *used* from one
    that merely did not collapse."""
    mus, logvars = [], []
    with eval_mode(encoder):
        device = next(encoder.parameters()).device
        for x in images.split(CHUNK):
            mu, logvar = encoder(x.to(device))
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
    mu, logvar = torch.cat(mus), torch.cat(logvars)
    usage = {}
    latents = latents_of(encoder)
    for name, m, lv in zip(latents.names, latents.split(mu), latents.split(logvar)):
        usage[name] = {
            "kl": float(kl_to_standard_normal(m, lv)),
            "kl_offset": float(0.5 * m.mean(0).pow(2).sum()),
            "active_units": int((m.var(0) > ACTIVE_UNIT_THRESHOLD).sum()),
            "dims": m.shape[1],
        }
    return usage


# ---- the transfer error against ground truth ------------------------------------------------------


def sample_pairs(data: TranslationSet, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """n pairs (A, B) of image indices with A and B of different classes, seeded."""
    generator = torch.Generator().manual_seed(seed)
    if len(torch.unique(data.classes)) < 2:
        raise UserError("content transfer needs images of at least two classes")
    a = torch.randint(len(data.images), (n,), generator=generator)
    b = torch.randint(len(data.images), (n,), generator=generator)
    same = data.classes[a] == data.classes[b]
    while same.any():  # redraw B where it shares A's class
        b[same] = torch.randint(len(data.images), (int(same.sum()),), generator=generator)
        same = data.classes[a] == data.classes[b]
    return a, b


def _lpips_metric():
    """torchmetrics' LPIPS (AlexNet) when torchvision and the AlexNet weights are on this machine, else
    (None, why). The weights are never downloaded."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return None, "torchvision is not installed"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return None, f"no AlexNet weights (alexnet-*.pth) in {hub}"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval(), ""
    except Exception as exc:  # a torchvision or torchmetrics that does not load here
        return None, f"LPIPS could not be built ({type(exc).__name__})"


def image_errors(predicted: Tensor, target: Tensor, lpips=None) -> dict[str, float]:
    """Mean per-pixel MSE and mean SSIM (and LPIPS if given) of images in [0, 1]; (N, C, H, W) each."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    predicted, target = predicted.float(), target.float()
    errors = {
        "mse": float((predicted - target).pow(2).mean()),
        "ssim": float(structural_similarity_index_measure(predicted, target, data_range=1.0)),
    }
    if lpips is not None:
        with torch.no_grad():
            values = [lpips(p.expand(-1, 3, -1, -1), t.expand(-1, 3, -1, -1)) * len(p) for p, t in zip(predicted.split(CHUNK), target.split(CHUNK))]
        errors["lpips"] = float(sum(values) / len(predicted))
    return errors


def transfer_errors(encoder: nn.Module, decoder: nn.Module, data: TranslationSet, pairs: int = 2000, seed: int = 0) -> dict:
    """Transfer error of ``pairs`` random cross-class pairs of ``data`` against the ground truth.

    Returns ``{"transfer": {...}, "copy_content": {...}, "copy_class": {...}, "reconstruction": {...},
    "pairs": n, "lpips_note": why LPIPS is missing (or "")}``; each entry maps mse / ssim (/ lpips) to a value.
    """
    if pairs < 1:
        raise UserError(f"the number of pairs must be >= 1, got {pairs}")
    a, b = sample_pairs(data, pairs, seed)
    answer, known = data.ground_truth(a, b)
    if not bool(known.all()):
        a, b, answer = a[known], b[known], answer[known]
        if len(a) == 0:
            raise UserError("no pair's ground truth (A's class in B's pose) is in the dataset")
    images = data.images.float().div(255)
    class_images, content_images, truth = images[a], images[b], images[answer]
    lpips, note = _lpips_metric()
    transferred = transfer(encoder, decoder, class_images, content_images)
    reconstructed = transfer(encoder, decoder, class_images, class_images)
    return {
        "pairs": len(a),
        "transfer": image_errors(transferred, truth, lpips),
        "copy_content": image_errors(content_images, truth, lpips),
        "copy_class": image_errors(class_images, truth, lpips),
        "reconstruction": image_errors(reconstructed, class_images, lpips),
        "latents": latent_usage(encoder, images),
        "lpips_note": note,
    }


def flat_metrics(errors: dict, split: str) -> dict[str, float]:
    """``transfer_mse_test``, ``copy_content_ssim_test``, ... from :func:`transfer_errors`' nested result."""
    flat = {
        f"{kind}_{metric}_{split}": value
        for kind in ("transfer", "copy_content", "copy_class", "reconstruction")
        for metric, value in errors[kind].items()
    }
    for latent, usage in errors.get("latents", {}).items():
        flat.update({f"{latent}_{key}_{split}": usage[key] for key in ("kl", "kl_offset", "active_units")})
    return flat


# ---- the Figure-7 matrix ----------------------------------------------------------------------------


def pick_matrix_images(data: TranslationSet, rows: int, columns: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of ``rows`` class images and ``columns`` content images, all of different classes where
    the set has enough classes, in random poses."""
    if rows < 1 or columns < 1:
        raise UserError(f"the matrix needs at least one row and one column, got {rows} x {columns}")
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(data.classes)
    order = classes[torch.randperm(len(classes), generator=generator)]
    wanted = order.repeat(-(-(rows + columns) // len(order)))[: rows + columns]
    picked = []
    for c in wanted.tolist():
        members = torch.nonzero(data.classes == c).flatten()
        picked.append(int(members[torch.randint(len(members), (1,), generator=generator)]))
    picked = torch.tensor(picked)
    return picked[:rows], picked[rows:]


def _bordered(matrix: Tensor, class_images: Tensor, content_images: Tensor) -> np.ndarray:
    """Figure 7's layout as one (rows+1)·(columns+1) grid: a blank corner, content images across the
    top, class images down the left, transfers inside."""
    rows, columns = matrix.shape[:2]
    blank = torch.ones_like(class_images[:1])
    cells = [blank, content_images]
    for r in range(rows):
        cells += [class_images[r : r + 1], matrix[r]]
    return tile_images(torch.cat(cells).numpy(), columns + 1)


def plot_transfer_matrix(panels: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """One or more bordered matrices side by side (e.g. the model's and the ground truth)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.4, 3.6), squeeze=False)
    for ax, (name, grid) in zip(axes[0], panels.items()):
        ax.imshow(grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray" if grid.shape[2] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


@dataclass
class TransferMatrix:
    path: Path
    matrix: Tensor  # (R, C, channels, H, W) transfers
    truth: Tensor | None  # the same from the ground truth, when the dataset has poses


def translate(
    run_dir: TrainedModel | str | Path,
    rows: int = 4,
    columns: int = 4,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
    data: TranslationSet | None = None,
    images: str | Path | Tensor | None = None,
) -> TransferMatrix:
    """Figure 7 for a run: class images down the left, content images across the top, transfers inside,
    beside the ground-truth matrix when the dataset has pose labels. Writes a PNG and returns it.

    The images come from ``data`` (default: the run's dataset, ``split``), or from ``images`` (an .npz,
    a folder of images or a tensor): its first ``rows`` images give the classes, the next ``columns``
    the contents (no ground truth then)."""
    model = as_trained(run_dir)
    path = picture_path(model, out, f"transfer_{split}")
    if images is not None:
        picked, _ = pick_images(model, rows + columns, seed, images)
        class_images, content_images = picked[:rows], picked[rows:]
    else:
        data = data if data is not None else _translation_data(model.config, model.run_dir or model.checkpoint, split)
        class_index, content_index = pick_matrix_images(data, rows, columns, seed)
        all_images = data.images.float().div(255)
        class_images, content_images = all_images[class_index], all_images[content_index]
    matrix = transfer_matrix(model.encoder, model.sampling_decoder, class_images, content_images)
    panels = {"class (left) x content (top)": _bordered(matrix, class_images, content_images)}
    truth = None
    if images is None and data.poses is not None:
        answer, known = data.ground_truth(class_index.repeat_interleave(columns), content_index.repeat(rows))
        if bool(known.all()):
            truth = all_images[answer].view_as(matrix)
            panels["ground truth"] = _bordered(truth, class_images, content_images)
    config = model.config
    plot_transfer_matrix(panels, path, f"{config.method.name}, step {model.step}, {split} split ({config.data.name})")
    return TransferMatrix(path, matrix, truth)


def _translation_data(config: Config, where: Path, split: str, posed: bool = False) -> TranslationSet:
    """The translation data of the run at ``where`` for ``split``; ``posed``: it must have pose labels (a transfer ground truth)."""
    if split not in ("train", "test"):
        raise UserError(f"--split must be train or test, got {split!r}")
    if config.model.arch != "translation":
        raise UserError(f"{str(where)!r} is a {config.model.arch} run; content transfer needs model.arch translation")
    data = load_translation_set(config.data, split)
    if posed and data.poses is None:
        raise UserError(f"dataset {config.data.name!r} has no pose labels: content transfer has no ground truth (use 'translate' for pictures)")
    return data


def evaluate_transfer(run_dir: TrainedModel | str | Path, pairs: int = 2000, split: str = "test", seed: int = 0, argv: list[str] | None = None) -> dict:
    """Transfer error of a run's latest checkpoint on ``split`` (held-out classes for ``test``).

    Appends ``{"kind": "transfer", ...}`` to the run's metrics.jsonl, merges the values into
    metrics.json, writes ``transfer.json`` and the matrix ``transfer.png`` into the run directory;
    returns the nested errors with ``step`` and ``metrics`` (flat names) added.
    """
    model = as_trained(run_dir)
    if model.run_dir is None:
        raise UserError(f"{str(model.checkpoint)!r} is a checkpoint file: evaluate its run directory, where the results are written")
    check_writable(model.run_dir, "run directory", folder=True)
    data = _translation_data(model.config, model.run_dir, split, posed=True)
    errors = transfer_errors(model.encoder, model.sampling_decoder, data, pairs=pairs, seed=seed)
    metrics = flat_metrics(errors, split)
    run = RunDir(model.run_dir)
    run.log({"step": model.step, "kind": "transfer", "pairs": errors["pairs"], **metrics})
    final = json.loads(run.final_metrics_path.read_text()) if run.final_metrics_path.exists() else {"step": model.step}
    if final.get("step") == model.step:
        run.write_final_metrics({**final, **metrics})
    atomic_write_text(run.path / "transfer.json", json.dumps({"step": model.step, "split": split, **errors}, indent=2) + "\n")
    translate(model, split=split, seed=seed, out=run.path / "transfer.png", data=data)
    if argv:
        run.record_command(argv)
    return {"step": model.step, "metrics": metrics, **errors}


# ---- transfer error over training: every kept checkpoint ------------------------------------------


def _checkpoint_models(run: RunDir, config: Config):
    """A :class:`TrainedModel` for each kept checkpoint that loads, oldest first; corrupt ones are skipped with a warning."""
    for path in run.checkpoints():
        try:
            yield TrainedModel.load(path, config)
        except UserError as exc:
            warn(f"skipping {path.name}: {str(exc)[:160]}")


def transfer_curve(run_dir: str | Path, pairs: int = 1000, split: str = "test", seed: int = 0) -> dict:
    """Transfer error of every checkpoint the run kept (``train.keep_checkpoints`` of them), on the same
    pairs: when, if ever, the model learned to transfer. Writes ``transfer_curve.json`` and
    ``transfer_curve.png`` (transfer and reconstruction MSE / SSIM against the two copy answers) into
    the run directory and returns the JSON's content."""
    run = RunDir.open(run_dir)
    check_writable(run.path, "run directory", folder=True)
    config = run.load_config()
    data = _translation_data(config, run.path, split, posed=True)
    if not run.checkpoints():
        raise UserError(f"run directory {str(run.path)!r} has no checkpoint yet")
    points = []
    for model in tqdm(_checkpoint_models(run, config), total=len(run.checkpoints()), desc="transfer per checkpoint", leave=False):
        errors = transfer_errors(model.encoder, model.sampling_decoder, data, pairs=pairs, seed=seed)
        points.append({"step": model.step, **{k: errors[k] for k in ("transfer", "reconstruction", "copy_content", "copy_class", "latents")}})
    if not points:
        raise UserError(f"no checkpoint of {str(run.path)!r} could be loaded")
    result = {"split": split, "pairs": pairs, "seed": seed, "method": config.method.name, "points": points}
    atomic_write_text(run.path / "transfer_curve.json", json.dumps(result, indent=2) + "\n")
    plot_transfer_curve(result, run.path / "transfer_curve.png", f"{config.method.name}: content transfer over training ({split} split, {pairs} pairs)")
    return result


def plot_transfer_curve(result: dict, path: Path, title: str) -> Path:
    """MSE (lower is better) and SSIM (higher is better) per checkpoint; the copy answers as dashed lines."""
    steps = [p["step"] for p in result["points"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("mse", "ssim")):
        ax.plot(steps, [p["transfer"][metric] for p in result["points"]], "o-", label="transfer")
        ax.plot(steps, [p["reconstruction"][metric] for p in result["points"]], "s-", alpha=0.6, label="reconstruction")
        for kind, style in (("copy_content", "--"), ("copy_class", ":")):
            ax.axhline(result["points"][-1][kind][metric], color="gray", linestyle=style, label=kind.replace("_", " "))
        ax.set_xlabel("step")
        ax.set_title(f"{metric.upper()} {'(lower is better)' if metric == 'mse' else '(higher is better)'}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


__all__ = [
    "TransferMatrix",
    "evaluate_transfer",
    "plot_transfer_curve",
    "transfer_curve",
    "flat_metrics",
    "image_errors",
    "latent_parts",
    "latent_usage",
    "pick_matrix_images",
    "sample_pairs",
    "transfer",
    "transfer_errors",
    "transfer_matrix",
    "translate",
]

