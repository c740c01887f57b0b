"""The ``softintrovae`` command line: a thin layer over the Python API.

Bad input exits with status 2 and one line naming the problem; a diverged training, or a run
directory that cannot be written (a full disk), exits with 1; any command interrupted by Ctrl-C or
SIGTERM with 130 and one line (a training after saving a checkpoint). Warnings of the run (a
corrupt checkpoint passed over, a skipped batch) are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import RunDirWriteError, RunWarning, TrainingDiverged, TrainingInterrupted, UserError, out_of_memory
from .experiments import EXPERIMENTS, check_flag, reproduce
from .files import check_writable
from .interrupts import interrupts_raise
from .limits import INT_MAX, SEED_MAX, out_of_range
from .yamlfiles import load_presets, parse_override

# The commands import the library (and so torch) when they run, so that --help, --version and
# `presets` start at once.

DEMO_PRESET = "demo"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UserError(f"{message} (see '{self.prog} --help')")


def _int_in(low: int, high: int = INT_MAX):
    """An argparse type: an integer in [low, high]; anything else is the parser's one-line error."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        problem = out_of_range(value, low, high)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return integer


def _positive_float(allow_zero: bool = False):
    """An argparse type: a finite number > 0 (>= 0 with ``allow_zero``)."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {'>= 0' if allow_zero else '> 0'}")
        return value

    return number


SEED = _int_in(0, SEED_MAX)
COUNT = _int_in(1)
# pictures: a PNG grid stays below matplotlib's 2**16 pixels a side even for 256x256 images
MAX_PICTURES, MAX_GRID_SIDE = 1024, 64


def _overrides(pairs: list[str]) -> dict:
    return dict(parse_override(p) for p in pairs)


def _print_result(run_dir: Path, metrics: dict[str, float]) -> None:
    from .distributed import current_process

    if not current_process().is_main:  # under torchrun, rank 0 reports for all
        return
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    print(f"run directory: {run_dir}")
    print(f"final metrics: {shown}")


def cmd_train(args) -> int:
    from .trainer import resume, train

    argv = ["softintrovae", *args.argv]
    if args.resume:
        if args.config:
            raise UserError("give either a preset/config or --resume RUN_DIR, not both")
        if args.out:
            raise UserError("--out cannot be combined with --resume (the run directory is RUN_DIR)")
        result = resume(args.resume, _overrides(args.set), argv=argv)
        if result.already_finished:
            print(f"{args.resume} has already trained all its steps and been evaluated: nothing to do (raise train.steps, or train.epochs, to train longer)")
    else:
        if not args.config:
            raise UserError("train needs a preset name or a config .yaml file (or --resume RUN_DIR)")
        result = train(args.config, out=args.out, overrides=_overrides(args.set), argv=argv)
    _print_result(result.run_dir, result.metrics)
    return 0


def _fid_kid_request(names: str) -> tuple[list[str], dict]:
    """``fid10k_train_fmnistnet,kid10k_train_fmnistnet`` → the names and the eval override they need."""
    from .metrics.fid import parse_metric_name

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    parsed = [parse_metric_name(n) for n in wanted]
    counts = {n for _, n, _, _ in parsed}
    if len(counts) != 1:
        raise UserError(f"--metrics must share one sample count, got {sorted(counts)}")
    if any(split != "train" for _, _, split, _ in parsed):
        raise UserError("--metrics: only the train split is supported (e.g. fid10k_train_fmnistnet)")
    return wanted, {"eval.fid_samples": counts.pop()}


def cmd_evaluate(args) -> int:
    from .trainer import evaluate

    names = [n.strip() for n in (args.metrics or "").split(",") if n.strip()]
    translation = {"transfer": _evaluate_transfer, "transfer-curve": _evaluate_transfer_curve}  # softintrovae.translation
    for name in [n for n in names if n in translation]:
        translation[name](args)
        names.remove(name)
    if (args.metrics or "").strip() and not names:
        return 0
    args.metrics = ",".join(names)
    wanted, overrides = _fid_kid_request(args.metrics) if args.metrics else ([], None)
    result = evaluate(args.run_dir, argv=["softintrovae", *args.argv], overrides=overrides)
    missing = [name for name in wanted if name not in result.metrics]
    if missing:
        computed = ", ".join(k for k in result.metrics if k.startswith(("fid", "kid"))) or "none"
        raise UserError(f"{missing[0]} is not this run's FID/KID protocol; computed: {computed}")
    _print_result(result.run_dir, result.metrics)
    print(json.dumps(result.metrics))
    return 0


def _evaluate_transfer(args) -> None:
    from .translation import evaluate_transfer

    found = evaluate_transfer(args.run_dir, argv=["softintrovae", *args.argv])
    print(f"content transfer on held-out classes ({found['pairs']} pairs, step {found['step']}):")
    for kind in ("transfer", "copy_content", "copy_class", "reconstruction"):
        print(f"  {kind:<15}" + "   ".join(f"{metric} {value:.4f}" for metric, value in found[kind].items()))
    for latent, u in found["latents"].items():
        print(f"  {latent + ' latent':<15}KL {u['kl']:.3g} nats (offset {u['kl_offset']:.2g}), {u['active_units']}/{u['dims']} active units")
    if found["lpips_note"]:
        print(f"  LPIPS skipped: {found['lpips_note']}")
    print(f"matrix: {Path(args.run_dir) / 'transfer.png'}")
    print(json.dumps(found["metrics"]))


def _evaluate_transfer_curve(args) -> None:
    from .translation import transfer_curve

    found = transfer_curve(args.run_dir)
    print(f"content transfer per checkpoint ({found['split']} split, {found['pairs']} pairs):")
    for point in found["points"]:
        cells = "   ".join(f"{kind} mse {point[kind]['mse']:.4f} ssim {point[kind]['ssim']:.3f}" for kind in ("transfer", "reconstruction"))
        print(f"  step {point['step']:>7}   {cells}")
    print(f"curve: {Path(args.run_dir) / 'transfer_curve.png'}")


def cmd_translate(args) -> int:
    from .translation import translate

    found = translate(args.run_dir, rows=args.rows, columns=args.columns, split=args.split, seed=args.seed, out=args.out, images=args.images)
    print(found.path)
    return 0


def cmd_demo(args) -> int:
    from .trainer import default_run_dir, train

    overrides = _overrides(args.set)
    out = args.out or default_run_dir(DEMO_PRESET)
    print(f"Training Soft-IntroVAE on 8 Gaussians (preset '{DEMO_PRESET}') into {out} ...")
    result = train(DEMO_PRESET, out=out, overrides=overrides, argv=["softintrovae", *args.argv])
    run = result.run_dir
    print(f"samples:  {run / 'samples.png'}")
    print(f"density:  {run / 'density.png'}")
    print(f"metrics:  {run / 'metrics.json'}")
    m = result.metrics
    print(f"KL {m['kl']:.3f}   JSD {m['jsd_official']:.3f} (paper's definition)   gnELBO {m['gnelbo'] * 1e7:.3f}e-7")
    return 0


RAY_FLAGS = ("address", "cpus_per_run", "gpus_per_run", "early_stop")


def _sweep_backend(args):
    """The backend the flags ask for; a flag of the other backend is one line."""
    from .sweep import LocalBackend, parse_devices

    if args.backend == "local":
        given = [f"--{name.replace('_', '-')}" for name in RAY_FLAGS if getattr(args, name) is not None]
        if given:
            raise UserError(f"{', '.join(given)} need --backend ray")
        return LocalBackend(args.workers or 1, parse_devices(args.devices) if args.devices else None)
    if args.devices:
        raise UserError("--devices is for --backend local; with --backend ray give each run GPUs with --gpus-per-run")
    from .sweep_ray import RayBackend

    return RayBackend(
        address=args.address,
        cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
        gpus_per_run=0.0 if args.gpus_per_run is None else args.gpus_per_run,
        early_stop=args.early_stop,
        max_concurrent=args.workers,
    )


def cmd_sweep(args) -> int:
    from .config import load_config
    from .sweep import expand_grid, sweep
    from .trainer import default_run_dir

    overrides = _overrides(args.set)
    grid = expand_grid(args.grid, load_config(args.config, overrides).method.name)
    backend = _sweep_backend(args)
    out = args.out or default_run_dir(f"sweep-{Path(args.config).stem}")
    print(f"sweep of {args.config}: {len(grid)} configurations x {args.seeds} seeds into {out} ({args.backend}) ...")
    table = sweep(args.config, grid, out, seeds=args.seeds, overrides=overrides, backend=backend)
    print(f"{len(table)} configurations; results: {Path(out) / 'results.md'}, {Path(out) / 'results.csv'}")
    return 0


def _csv_list(text: str | None, cast=str) -> list | None:
    if text is None:
        return None
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{text!r} must be a comma-separated list of numbers") from None


LIST_FLAGS = {"datasets": str, "methods": str, "margins": float, "roots": str}  # reproduce's comma-separated flags, by element type


def cmd_reproduce(args) -> int:
    name, experiment = args.experiment, EXPERIMENTS[args.experiment]
    kwargs = {}
    for flag in dict.fromkeys(flag for e in EXPERIMENTS.values() for flag in e.flags):
        keyword = flag[2:].replace("-", "_")  # --report-only -> report_only: the experiment's keyword argument
        value = getattr(args, keyword)
        if value is not None:
            check_flag(name, flag)
            kwargs[keyword] = _csv_list(value, LIST_FLAGS[keyword]) if keyword in LIST_FLAGS else value
    out = Path(args.out or experiment.defaults["out"])
    kwargs.update(out=out, overrides=_overrides(args.set))
    print(f"reproduce {name}: {experiment.plan(**{**experiment.defaults, **kwargs})} ...")
    reproduce(name, **kwargs)
    table = (out / experiment.report[0]).read_text()
    files = [out / report for report in experiment.report if (out / report).exists()]
    if experiment.files_first:
        for path in files:
            print(f"{path.suffix[1:]:>4}: {path}")
        print(table)
    else:
        print(table)
        for path in files:
            print(path)
    return 0


def cmd_pictures(args) -> int:
    from . import pictures

    if args.command == "sample" and args.format:
        return _dump_samples(args)
    if args.command != "interpolate" and args.n > MAX_PICTURES:
        raise UserError(f"a grid holds at most {MAX_PICTURES} images, got -n {args.n} (dump many samples with --format npz|png)")
    if args.command == "sample":
        paths = [pictures.sample(args.run_dir, n=args.n, seed=args.seed, out=args.out)]
    elif args.command == "reconstruct":
        paths = [pictures.reconstruct(args.run_dir, n=args.n, seed=args.seed, out=args.out, images=args.images)]
    else:
        paths = list(pictures.interpolate(args.run_dir, seed=args.seed, size=args.size, out=args.out, images=args.images))
    for path in paths:
        print(path)
    return 0


def _dump_samples(args) -> int:
    from .dumps import dump_samples
    from .trainer import resolve_device

    if args.grid:
        raise UserError("--grid draws one picture and --format dumps the samples one by one: give one of them")
    device = resolve_device(args.device)
    print(dump_samples(args.run_dir, args.n, args.out, args.format, args.seed, args.batch_size, device=device))
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_model

    path = export_model(args.run_dir, args.out)
    print(path)
    return 0


def cmd_import_official(args) -> int:
    from .config import load_config
    from .official import import_official_run
    from .trainer import default_run_dir

    config = load_config(args.preset, _overrides(args.set))
    out = args.out or default_run_dir(f"imported-{config.name}")
    print(import_official_run(args.checkpoint, config, out, argv=["softintrovae", *args.argv], smoothed_encoder=args.smoothed_encoder))
    return 0


def cmd_feature_net(args) -> int:
    """Train the small classifier whose features FID/KID use offline for ``--dataset``."""
    from .config import DataConfig
    from .data import IMAGE_DATASETS, load_images
    from .metrics.features import feature_nets_dir, train_feature_net

    if args.dataset not in IMAGE_DATASETS:
        raise UserError(f"unknown image dataset {args.dataset!r}; choose from {', '.join(IMAGE_DATASETS)}")
    out = check_writable(Path(args.out) if args.out else feature_nets_dir() / f"{args.dataset}.pt", "feature net file")
    images, labels = load_images(DataConfig(name=args.dataset, root=args.root))
    if labels is None:
        raise UserError(f"dataset {args.dataset!r} has no class labels to train a feature net on")
    path, accuracy = train_feature_net(images, labels, out, epochs=args.epochs, seed=args.seed)
    print(f"feature net: {path} (held-out accuracy {accuracy:.3f})")
    return 0


def cmd_ood(args) -> int:
    """AUROC of in- vs out-of-distribution images by a likelihood score of a trained image run."""
    from .ood import run_ood

    results = run_ood(
        args.run_dir, args.out, in_set=args.in_set, score=args.score, samples=args.samples, limit=args.limit,
        seed=args.seed, report_dir=args.report,
    )  # fmt: skip
    print((Path(results["report"]) / "ood.md").read_text())
    for name in ("ood.json", "ood.md", "scores.png", "roc.png"):
        print(Path(results["report"]) / name)
    return 0


def cmd_presets(args) -> int:
    presets = load_presets()
    width = max(map(len, presets))
    for name, body in presets.items():
        print(f"{name:<{width}}  {body.get('description', '')}")
    return 0


class _ExperimentDefaultsHelp(argparse.HelpFormatter):
    """Fills the experiments' defaults (``{ood[samples]}``, ``{seeds}``) into reproduce's help when it
    is shown: they are the experiment functions' keyword defaults, and importing those needs torch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        if "{" not in text:
            return text
        defaults = {name: experiment.defaults for name, experiment in EXPERIMENTS.items()}
        seeds = ", ".join(f"{name} {d['seeds']}" for name, d in defaults.items() if "seeds" in d)
        return text.format(seeds=seeds, **defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="softintrovae", description="Introspective VAEs: train, evaluate, reproduce.")
    parser.add_argument("--version", action="version", version=f"softintrovae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a preset or a config file into a run directory")
    p.add_argument("config", nargs="?", help="preset name (see 'softintrovae presets') or a config .yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. method.beta_kl=0.5")
    p.add_argument("--out", help="run directory to create (default: runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run's latest checkpoint (metrics.json and plots)")
    p.add_argument("run_dir")
    p.add_argument("--metrics", help="image runs: FID/KID to add, e.g. fid10k_train_fmnistnet,kid10k_train_fmnistnet; "
                   "translation runs: transfer (content-transfer error on held-out classes), "
                   "transfer-curve (the same for every kept checkpoint, with a plot)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="Soft-IntroVAE on 8 Gaussians in a few minutes; prints where the plots are")
    p.add_argument("--out", help="run directory to create (default: runs/demo-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="train the Cartesian product of grids x seeds; skips finished runs, resumes unfinished ones")
    p.add_argument("config", help="preset name or config .yaml")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="values to sweep for one key, or a named grid: 'paper' (the paper's search ranges)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key for every run")
    p.add_argument("--seeds", type=COUNT, default=1, help="seeds per configuration (train.seed and data.seed)")
    p.add_argument("--workers", type=COUNT, help="local: parallel worker processes, one torch thread each (default 1); "
                   "ray: at most this many runs at once (default: as many as the cluster's resources hold)")
    p.add_argument("--out", help="sweep directory (default: runs/sweep-NAME-TIMESTAMP); reuse it to continue; "
                   "with --backend ray on several machines it must be on storage every machine mounts at the same path")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="local worker processes, or Ray Tune trials (pip install 'softintrovae[ray]')")
    p.add_argument("--devices", metavar="D1,D2,...", help="local: devices given to the workers round robin, e.g. cuda:0,cuda:1")
    p.add_argument("--address", help="ray: the address of a running Ray cluster (ray start --head); default: start Ray on this machine")
    p.add_argument("--cpus-per-run", type=_positive_float(), metavar="N", help="ray: CPUs each run reserves, and its torch threads (default 1)")
    p.add_argument("--gpus-per-run", type=_positive_float(allow_zero=True), metavar="F", help="ray: GPUs each run reserves, a fraction shares one (default 0)")
    p.add_argument("--early-stop", metavar="METRIC", help="ray: stop runs whose METRIC (lower is better) lags at an evaluation (Tune's ASHA); needs train.eval_every")
    p.set_defaults(func=cmd_sweep)

    studies = ", ".join(f"{name} ({experiment.paper})" for name, experiment in EXPERIMENTS.items())
    p = sub.add_parser("reproduce", help=f"regenerate a result of the paper: {studies}", formatter_class=_ExperimentDefaultsHelp)
    p.add_argument("experiment", choices=list(EXPERIMENTS))
    p.add_argument("--runs", nargs=2, metavar=("VAE_RUN", "SOFT_RUN"), help="ood, translation: use these finished runs instead of training")
    p.add_argument("--samples", type=COUNT, help="ood: importance samples M (default {ood[samples]})")
    p.add_argument("--limit", type=_int_in(2), help="ood: images per set at most (default {ood[limit]})")
    p.add_argument("--seeds", type=COUNT, help="seeds per setting (default: {seeds})")
    p.add_argument("--iterations", type=COUNT, help="training iterations per run (paper: {table2[iterations]})")
    p.add_argument("--datasets", help="table2: comma-separated subset of 8gaussians,spiral,checkerboard,rings; "
                   "ood: in-distribution sets, e.g. fashion-mnist,mnist (Table 7's MNIST rows)")
    p.add_argument("--roots", help="ood: where datasets are, NAME=ROOT[,NAME=ROOT] (e.g. mnist=../shared/data/mnist)")
    p.add_argument("--methods", help="table2: comma-separated subset of vae,introvae,soft-introvae")
    p.add_argument("--margins", help="stability: comma-separated IntroVAE margins (default 1,2,...,10)")
    p.add_argument("--workers", type=COUNT, help="parallel runs, one torch thread each (default: CPU count)")
    p.add_argument("--out", help="experiment directory (default: runs/reproduce/EXPERIMENT); reuse it to continue")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key for every run")
    p.add_argument("--report-only", action="store_true", default=None, help="only rebuild the tables and figures from finished runs")
    p.set_defaults(func=cmd_reproduce)

    for name, help_text, n in (
        ("sample", "decode prior samples of an image run's latest checkpoint into a grid, or many of them for FID tools (--format)", 64),
        ("reconstruct", "training images beside their reconstructions (real | reconstruction pairs)", 16),
        ("interpolate", "a linear strip between two images and the 4-corner bilinear grid in latent space", 0),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run_dir", help="a run directory, a checkpoint file or an exported .safetensors file")
        if n:
            count = COUNT if name == "sample" else _int_in(1, MAX_PICTURES)  # a sample dump may hold any number
            p.add_argument("-n", "--n", type=count, default=n, help=f"number of images (default {n}; a grid holds at most {MAX_PICTURES})")
        else:
            p.add_argument("--size", type=_int_in(2, MAX_GRID_SIDE), default=8, help=f"images per side of the grid (default 8, at most {MAX_GRID_SIDE})")
        if name != "sample":
            p.add_argument("--images", help="an .npz or a folder of images to use (default: random images of the run's training data)")
        p.add_argument("--seed", type=SEED, default=0, help="seed for the latents / the images picked")
        p.add_argument("--out", help="PNG path (default: RUN_DIR/pictures/NAME_stepN.png); with --format, the .npz file or the PNG folder")
        if name == "sample":
            p.add_argument("--format", metavar="npz|png", help="dump the samples for FID tools: npz (uint8 NHWC images, labels) or png (a folder of numbered PNGs)")
            p.add_argument("--grid", action="store_true", help="one grid picture (what sample draws without --format)")
            p.add_argument("--batch-size", type=COUNT, default=256, help="with --format: images decoded at once (default 256; the samples do not depend on it)")
            p.add_argument("--device", default="auto", help="with --format: auto (CUDA when available), cpu or cuda[:N]")
        p.set_defaults(func=cmd_pictures)

    p = sub.add_parser("export", help="write a run's networks and config as one .safetensors file that loads without the run or its data")
    p.add_argument("run_dir", help="a run directory or a checkpoint file")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-official", help="turn a checkpoint of the official Soft-IntroVAE image or style trainer into a run directory")
    p.add_argument("checkpoint", help="the official .pth file ({'epoch', 'model'}, or the style trainer's {'models', 'auxiliary'})")
    p.add_argument("--preset", required=True, help="preset name or config .yaml whose architecture the checkpoint has")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. model.z_dim=32")
    p.add_argument("--out", help="run directory to create (default: runs/imported-NAME-TIMESTAMP)")
    p.add_argument(
        "--smoothed-encoder", action="store_true", help="style checkpoints: keep the smoothed encoder (as the official figures do), not the live one"
    )
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("translate", help="Figure 7: content transfer matrix of a translation run (class down the left, content across the top)")
    p.add_argument("run_dir")
    p.add_argument("--rows", type=_int_in(1, MAX_GRID_SIDE), default=4, help="class images, one per row (default 4)")
    p.add_argument("--columns", type=_int_in(1, MAX_GRID_SIDE), default=4, help="content images, one per column (default 4)")
    p.add_argument("--split", default="test", help="test (held-out classes, default) or train")
    p.add_argument("--seed", type=SEED, default=0, help="seed for the images picked")
    p.add_argument("--images", help="an .npz or a folder of images: the first ROWS give the classes, the next COLUMNS the contents (default: the run's dataset)")
    p.add_argument("--out", help="PNG path (default: RUN_DIR/pictures/transfer_SPLIT_stepN.png)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("feature-net", help="train the offline feature network FID/KID use for a dataset")
    p.add_argument("action", choices=["train"])
    p.add_argument("--dataset", required=True, help="image dataset name, e.g. fashion-mnist")
    p.add_argument("--root", help="data.root for the dataset (default: auto-detect where possible)")
    p.add_argument("--epochs", type=COUNT, default=3)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", help="where to save it (default: the feature-net folder, NAME.pt, where evaluation looks)")
    p.set_defaults(func=cmd_feature_net)

    p = sub.add_parser("ood", help="out-of-distribution detection: AUROC of in- vs out-set images by likelihood")
    p.add_argument("run_dir")
    p.add_argument("--in", dest="in_set", help="in-distribution dataset, NAME or NAME=ROOT (default: the run's own)")
    p.add_argument("--out", action="append", default=[], required=True, help="an out-of-distribution dataset, NAME or NAME=ROOT (repeatable)")
    p.add_argument("--score", default="iw", help="iw (importance-weighted log p(x), default), elbo (beta = 1) or elbo_beta (the run's betas)")
    p.add_argument("--samples", type=COUNT, default=5, help="importance samples M per image (default 5)")
    p.add_argument("--limit", type=_int_in(2), default=2000, help="images per set at most, a fixed random subset (default 2000)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--report", help="folder for ood.json/.md and the figures (default: RUN_DIR/ood)")
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None, *, default=warnings.showwarning):
    if issubclass(category, RunWarning):
        print(f"softintrovae: warning: {message}", file=sys.stderr)
    else:
        default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings(), interrupts_raise():
        warnings.simplefilter("always", RunWarning)
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UserError as exc:
        print(f"softintrovae: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"softintrovae: training diverged: {exc}", file=sys.stderr)
        return 1
    except RunDirWriteError as exc:
        print(f"softintrovae: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"softintrovae: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the training loop (see softintrovae.interrupts)
        print("softintrovae: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        what = out_of_memory(exc)
        if what is None:
            raise
        print(f"softintrovae: error: out of memory ({what}): lower data.batch_size, the model's widths or the eval.* sizes", file=sys.stderr)
        return 1
    except OSError as exc:  # the machine refused (a disk, a permission) after the checks up front passed
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"softintrovae: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
