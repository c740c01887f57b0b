"""Feature extractors for FID / KID, registered by name, that work offline (SPEC §3, §4).

- ``fmnistnet``: :class:`SmallClassifier`, a compact conv net we train ourselves on Fashion-MNIST
  (:func:`train_feature_net`); its penultimate activations are the features. Inception weights
  cannot be downloaded here, so this is what the tests and our own numbers use. Its FIDs are not
  comparable with the paper's Inception FIDs.
- ``inception``: the standard FID InceptionV3 (2048-d pool3 features) through torchmetrics, which
  needs ``torch-fidelity`` and the weights file ``pt_inception-2015-12-05-6726825d.pth``.

Each extractor is a :class:`FeatureExtractor`, usable directly as torchmetrics' custom
``feature=`` module, with a ``name`` and a ``hash`` of its weights so cached real-data features are
never reused across different networks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import UserError, first_line
from ..checkpoint import load_checkpoint, save_checkpoint

FEATURE_NETS_ENV = "SOFTINTROVAE_FEATURE_NETS"
DEFAULT_FEATURE_NETS_DIR = Path("~/.cache/softintrovae/feature-nets")
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception
CHECKPOINT_FORMAT = "softintrovae-feature-net-1"


def feature_nets_dir() -> Path:
    """Where named feature nets live: ``$SOFTINTROVAE_FEATURE_NETS``, else ``~/.cache/softintrovae/feature-nets``."""
    return Path(os.environ.get(FEATURE_NETS_ENV) or DEFAULT_FEATURE_NETS_DIR).expanduser()


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the state dict's names and raw tensor bytes, in order (identical after a save/load)."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SmallClassifier(nn.Module):
    """Images (B, C, H, W) in [0, 1] → class logits; ``features`` gives the penultimate (B, feature_dim)."""

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: int = 32, feature_dim: int = 128
    ):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes, self.width, self.feature_dim = num_classes, width, feature_dim
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for out_channels in (width, 2 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels, size = out_channels, size // 2
        if size < 1:
            raise UserError(f"feature net image_size must be >= 8, got {image_size}")
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, feature_dim), nn.ReLU())
        self.classifier = nn.Linear(feature_dim, num_classes)

    def hparams(self) -> dict[str, int]:
        return {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1], any size, gray or RGB → (B, feature_dim)."""
        channels = x.shape[1]
        if channels != self.in_channels:
            if self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            elif channels == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            else:
                raise UserError(f"feature net takes 1 or {self.in_channels} channels, got {channels}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class FeatureExtractor(nn.Module):
    """torchmetrics' custom ``feature=`` module: images (B, C, H, W) → features (B, num_features).

    Takes uint8 images as torchmetrics passes them (``normalize=False``) or floats in [0, 1]. The
    wrapped ``net`` has a ``features(x)`` method taking floats in [0, 1]. Always in eval mode.
    """

    def __init__(self, net: nn.Module, name: str, num_features: int):
        super().__init__()
        self.net, self.name, self.num_features = net, name, num_features
        self.hash = weights_sha256(net)[:12]
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: BatchNorm statistics are part of what the features mean."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        return self.net.features(x)


def train_feature_net(
    images_uint8: Tensor,
    labels: Tensor,
    out_path: str | Path,
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    num_classes: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[Path, float]:
    """Train a :class:`SmallClassifier` (Adam, cross-entropy) on 90 % of the images; save it atomically.

    Returns (path, accuracy on the held-out 10 %). The checkpoint holds only tensors and plain
    values (state dict, hyper-parameters, accuracy, weights hash), so it loads with ``weights_only``.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise UserError(f"images must be uint8 (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if labels.shape != images_uint8.shape[:1]:
        raise UserError(f"labels must have shape ({len(images_uint8)},), got {tuple(labels.shape)}")
    if len(images_uint8) < 10:
        raise UserError(f"a feature net needs at least 10 labelled images, got {len(images_uint8)}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    _, channels, height, width = images_uint8.shape
    if height != width:
        raise UserError(f"feature net images must be square, got {height}×{width}")

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images_uint8), generator=generator)
    held_out = max(1, len(order) // 10)
    test_index, train_index = order[:held_out], order[held_out:]
    x = images_uint8.float().div_(255)  # (N, C, H, W) in [0, 1]
    y = labels.long()

    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        model = SmallClassifier(channels, height, num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(train_index) // batch_size)
    bar = tqdm(total=epochs * steps_per_epoch, desc="feature net", disable=not progress, leave=False)
    model.train()
    for _ in range(epochs):
        shuffled = train_index[torch.randperm(len(train_index), generator=generator)]
        for batch in shuffled.split(batch_size):
            loss = F.cross_entropy(model(x[batch].to(device)), y[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()

    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[batch].to(device)).argmax(1).cpu() for batch in test_index.split(batch_size)])
    accuracy = float((predictions == y[test_index]).float().mean())
    model.cpu()
    out_path = Path(out_path)
    save_checkpoint(
        out_path,
        {
            "format": CHECKPOINT_FORMAT,
            "state_dict": model.state_dict(),
            "hparams": model.hparams(),
            "accuracy": accuracy,
            "weights_sha256": weights_sha256(model),
        },
    )
    return out_path, accuracy


def load_feature_net(path: str | Path) -> SmallClassifier:
    """The :class:`SmallClassifier` saved by :func:`train_feature_net`, in eval mode, weights verified."""
    checkpoint = load_checkpoint(Path(path))
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{str(path)!r} is not a softintrovae feature net (train one with train_feature_net)")
    try:
        model = SmallClassifier(**checkpoint["hparams"])
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = first_line(exc)
        raise UserError(f"feature net {str(path)!r} does not match its hyper-parameters ({reason[:120]})") from None
    if weights_sha256(model) != checkpoint.get("weights_sha256"):
        raise UserError(f"feature net {str(path)!r} is corrupt: its weights do not match their recorded hash")
    return model.eval()


def load_fmnistnet(path: str | Path | None = None) -> FeatureExtractor:
    """Our Fashion-MNIST classifier's features; default file ``<feature nets dir>/fashion-mnist.pt``."""
    path = Path(path).expanduser() if path is not None else feature_nets_dir() / "fashion-mnist.pt"
    if not path.is_file():
        raise UserError(
            f"feature net {str(path)!r} does not exist: train it with softintrovae.metrics.features.train_feature_net "
            f"or set {FEATURE_NETS_ENV} to the folder holding fashion-mnist.pt"
        )
    net = load_feature_net(path)
    return FeatureExtractor(net, "fmnistnet", net.feature_dim)


class _InceptionFeatures(nn.Module):
    """torchmetrics' FID InceptionV3 (2048-d pool3) behind the ``features(x in [0, 1])`` interface."""

    def __init__(self, weights_path: str | None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
        )

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # the images came as uint8; undo the /255 exactly (torch-fidelity resizes to 299 itself)
        return self.inception(x.mul(255).round().clamp(0, 255).to(torch.uint8))


def load_inception(path: str | Path | None = None) -> FeatureExtractor:
    """The standard FID InceptionV3, through torchmetrics and torch-fidelity.

    Offline, point it at a local copy of the FID weights: ``path`` = the file
    ``pt_inception-2015-12-05-6726825d.pth`` (torch-fidelity's ``FeatureExtractorInceptionV3``
    takes it as ``feature_extractor_weights_path``), or put that file in the feature nets folder
    (``$SOFTINTROVAE_FEATURE_NETS`` or ``~/.cache/softintrovae/feature-nets``). With neither,
    torch-fidelity downloads the weights on first use.
    """
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
    except ImportError:
        raise UserError(
            "the 'inception' feature extractor needs torch-fidelity: pip install torch-fidelity, and the FID "
            f"Inception weights file {INCEPTION_WEIGHTS_FILE} (pass its path, or put it in {feature_nets_dir()})"
        ) from None
    if path is None and (feature_nets_dir() / INCEPTION_WEIGHTS_FILE).is_file():
        path = feature_nets_dir() / INCEPTION_WEIGHTS_FILE
    if path is not None and not Path(path).expanduser().is_file():
        raise UserError(f"Inception weights file {str(path)!r} does not exist")
    net = _InceptionFeatures(None if path is None else str(Path(path).expanduser()))
    return FeatureExtractor(net, "inception", 2048)


FEATURE_EXTRACTORS: dict[str, Callable[[str | Path | None], FeatureExtractor]] = {
    "fmnistnet": load_fmnistnet,
    "inception": load_inception,
}


def get_feature_extractor(name: str, path: str | Path | None = None) -> FeatureExtractor:
    """The registered extractor ``name``, its weights from ``path`` (else its default file)."""
    if name not in FEATURE_EXTRACTORS:
        raise UserError(f"feature extractor must be one of {', '.join(FEATURE_EXTRACTORS)}, got {name!r}")
    return FEATURE_EXTRACTORS[name](path)
