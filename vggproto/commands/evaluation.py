"""``vggproto evaluate``, ``classify`` and ``extract``: the paper's test-time procedures (issue #7)."""
from __future__ import annotations

import json
import logging
import os

import click

from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import MEAN_BGR

log = logging.getLogger("vggproto.evaluation.evaluate")
_MEAN = ",".join(f"{v:g}" for v in MEAN_BGR)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VGGProtoError(f"{what} takes comma-separated integers, got '{text}'") from None
    if not values:
        raise VGGProtoError(f"{what} is empty")
    return values


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise VGGProtoError(f"{what} takes comma-separated numbers (B,G,R), got '{text}'") from None
    if len(values) not in (1, 3):
        raise VGGProtoError(f"{what} takes 1 or 3 numbers (B,G,R), got {len(values)}")
    return values


def _device(gpus: str | None) -> str:
    """``--gpus 0`` -> cuda:0; with several ids only the first is used (evaluation is one process)."""
    if gpus is None or gpus.strip().lower() == "cpu":
        return "cpu"
    import torch
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not all(g.isdigit() for g in ids) or not ids:
        raise VGGProtoError(f"--gpus takes GPU ids like 0 or 0,1, got '{gpus}'")
    if not torch.cuda.is_available():
        raise VGGProtoError(f"--gpus {gpus}: no CUDA device is available (run without --gpus for the CPU)")
    if len(ids) > 1:
        log.warning("evaluation runs on one device; using cuda:%s of --gpus %s", ids[0], gpus)
    return f"cuda:{ids[0]}"


def _common(fn):
    for decorator in reversed([
        click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="Deploy prototxt (or a _dense net)."),
        click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="caffemodel / .h5 / .pt / .safetensors weights (classification or dense names)."),
        click.option("--mean-value", default=_MEAN, show_default=True, help="BGR mean pixel subtracted."),
        click.option("--input-scale", type=float, default=1.0, show_default=True,
                     help="Multiplies (pixel - mean), like the training net's transform_param.scale."),
        click.option("--gpus", "--gpu", "gpus", help="GPU id (several: the first is used). Default: CPU."),
    ]):
        fn = decorator(fn)
    return fn


@click.command("evaluate")
@_common
@click.option("--list", "list_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Caffe list file: '<image path> <label>' per line.")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--mode", type=click.Choice(["center", "dense", "crops", "dense+crops"]), default="dense",
              show_default=True)
@click.option("--scales", default="256,384,512", show_default=True, help="Test scales Q (smallest image side).")
@click.option("--flip/--no-flip", default=None, help="Average with horizontal flips [default: on, off for center].")
@click.option("--grid", type=int, default=5, show_default=True, help="g: a g x g grid of crops per scale.")
@click.option("--crop-size", type=int, default=0, help="Crop size [default: the deploy net's input H/W].")
@click.option("--fuse", "fuse", multiple=True, metavar="DEPLOY:WEIGHTS",
              help="Another model whose posteriors are averaged in (repeatable).")
@click.option("--batch", type=int, default=50, show_default=True, help="Views per forward pass.")
@click.option("--workers", type=int, default=2, show_default=True, help="Image decoding processes (0: inline).")
@click.option("--skip-bad", is_flag=True, help="Count and list unreadable images instead of failing.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images of the list.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the summary as JSON.")
def evaluate_command(model, weights, mean_value, input_scale, gpus, list_path, root, mode, scales, flip, grid,
                     crop_size, fuse, batch, workers, skip_bad, limit, json_path):
    """Top-1 / top-5 error (%) on a labelled image list, as in the paper's Tables 3-6."""
    from vggproto.evaluation.evaluate import EvalOptions, evaluate, format_table, load_model
    device = _device(gpus)
    if grid < 1 or batch < 1:
        raise VGGProtoError("--grid and --batch must be positive")
    pairs = [(model, weights)]
    for spec in fuse:
        deploy, sep, w = spec.rpartition(":")
        if not sep or not deploy or not w:
            raise VGGProtoError(f"--fuse takes DEPLOY:WEIGHTS, got '{spec}'")
        for path in (deploy, w):
            if not os.path.exists(path):
                raise VGGProtoError(f"--fuse {spec}: no such file '{path}'")
        pairs.append((deploy, w))
    models = [load_model(d, w, device) for d, w in pairs]
    options = EvalOptions(mode=mode, scales=_ints(scales, "--scales"), flip=flip, grid=grid, crop_size=crop_size,
                          mean=_floats(mean_value, "--mean-value"), batch=batch, workers=workers,
                          skip_bad=skip_bad, root=root, input_scale=input_scale)
    result = evaluate(models, list_path, options, device, limit)
    summary = result.as_dict(options, models)
    summary["device"] = device
    click.echo(format_table(summary))
    for bad in result.bad:
        click.echo(f"skipped: {bad}")
    if json_path:
        from vggproto.caffe.files import atomic_write_bytes
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode())


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_common
@click.option("--top", type=int, default=5, show_default=True, help="How many classes to print.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line [default: ILSVRC-2012 synset words for 1000 classes].")
@click.option("--scale", type=int, default=0, help="Rescale the smallest side to this before the centre crop "
                                                   "[default: the net's input size].")
def classify_command(images, model, weights, mean_value, input_scale, gpus, top, labels, scale):
    """Top-k classes of IMAGE... with their probabilities."""
    from vggproto.evaluation.classify import classify
    if top < 1:
        raise VGGProtoError("--top must be positive")
    results = classify(list(images), model, weights, top=top, labels=labels, scale=scale,
                       mean=_floats(mean_value, "--mean-value"), device=_device(gpus), input_scale=input_scale)
    for image, predictions in zip(images, results):
        click.echo(image)
        for rank, p in enumerate(predictions, 1):
            click.echo(f"  {rank}. {p.probability:.4f}  {p.name}")


@click.command("extract")
@_common
@click.option("--list", "list_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Caffe list file: '<image path> <label>' per line.")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--blob", default="fc7", show_default=True, help="Blob to pool (fc7 is fc7-conv in a _dense net).")
@click.option("--scales", default="256,384,512", show_default=True, help="Scales Q (smallest image side).")
@click.option("--aggregate", type=click.Choice(["stack", "average"]), default="average", show_default=True,
              help="Across scales: concatenate or average (then L2-normalise).")
@click.option("--workers", type=int, default=2, show_default=True, help="Image decoding processes (0: inline).")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out instead of failing.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
def extract_command(model, weights, mean_value, input_scale, gpus, list_path, root, blob, scales, aggregate, workers,
                    skip_bad, out):
    """Appendix B image descriptors (dense net, global average pooling, flips, scales, L2) into an HDF5 file."""
    from vggproto.evaluation.extract import extract, write_features
    qs = _ints(scales, "--scales")
    features = extract(model, weights, list_path, blob=blob, scales=qs, how=aggregate, root=root,
                       mean=_floats(mean_value, "--mean-value"), device=_device(gpus), workers=workers,
                       skip_bad=skip_bad, input_scale=input_scale)
    write_features(out, features, {"model": os.fspath(model), "weights": os.fspath(weights), "blob": blob,
                                   "scales": list(qs), "aggregate": aggregate})
    click.echo(f"wrote {features.features.shape[0]} x {features.features.shape[1]} features to {out}"
               + (f"; skipped {len(features.bad)} bad images" if features.bad else ""))


commands = [evaluate_command, classify_command, extract_command]
