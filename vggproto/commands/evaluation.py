"""``vggproto evaluate``, ``classify``, ``extract`` and ``detect``: the paper's test-time procedures (issue #7) and
SSD-style detection with a fork net (issue #16)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import click

from vggproto.commands.engine_option import engine_hook, engine_option
from vggproto.commands.options import IntList, MeanValue, ModelPair, force_option, gpus_option, preprocess_options

if TYPE_CHECKING:
    from vggproto.net.devices import Devices


def _common(fn: Callable) -> Callable:
    """--model, --weights, --mean-value, --input-scale, --gpus and --engine, shared by the three commands."""
    fn = engine_option(fn)
    fn = gpus_option(help="GPU id, e.g. 0 (one device). Default: CPU.")(fn)
    fn = preprocess_options(fn)
    fn = click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
                      help="caffemodel / .h5 / .pt / .safetensors weights (classification or dense names).")(fn)
    return click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
                        help="Deploy prototxt (or a _dense net).")(fn)


@click.command("evaluate")
@_common
@click.option("--list", "list_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Caffe list file: '<image path> <label>' per line.")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--mode", type=click.Choice(["center", "dense", "crops", "dense+crops"]), default="dense",
              show_default=True)
@click.option("--scales", type=IntList(), default="256,384,512", show_default=True,
              help="Test scales Q (smallest image side).")
@click.option("--flip/--no-flip", default=None, help="Average with horizontal flips [default: on, off for center].")
@click.option("--grid", type=int, default=5, show_default=True, help="g: a g x g grid of crops per scale.")
@click.option("--crop-size", type=int, default=0, help="Crop size [default: the deploy net's input H/W].")
@click.option("--fuse", "fuse", multiple=True, type=ModelPair(),
              help="Another model whose posteriors are averaged in (repeatable).")
@click.option("--batch", type=int, default=50, show_default=True,
              help="Pixels per forward pass, as a number of 224x224 views (a whole image counts by its pixels, a "
                   "small net's crops pass many at once), so memory stays bounded in every mode.")
@click.option("--channels-last", is_flag=True, help="Keep the nets' 4-D weights and activations in NHWC memory "
              "(faster on most CPUs and GPUs; the same errors up to float rounding).")
@click.option("--workers", type=int, default=2, show_default=True, help="Image decoding processes (0: inline).")
@click.option("--skip-bad", is_flag=True, help="Count and list unreadable images instead of failing.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images of the list.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the summary as JSON.")
@force_option
def evaluate_command(model: str, weights: str, mean_value: tuple[float, ...], input_scale: float, gpus: Devices,
                     list_path: str, root: str, mode: str, scales: tuple[int, ...], flip: bool | None, grid: int,
                     crop_size: int, fuse: tuple[tuple[str, str], ...], batch: int, workers: int, skip_bad: bool,
                     channels_last: bool, limit: int | None, json_path: str | None, force: bool, engine: str) -> None:
    """Top-1 / top-5 error (%) on a labelled image list, as in the paper's Tables 3-6."""
    from vggproto.evaluation.evaluate import EvalOptions, format_table
    from vggproto.evaluation.run import evaluate_files
    options = EvalOptions(mode=mode, scales=scales, flip=flip, grid=grid, crop_size=crop_size, mean=mean_value,
                          batch=batch, workers=workers, skip_bad=skip_bad, root=root, input_scale=input_scale,
                          channels_last=channels_last)
    run = evaluate_files([(model, weights), *fuse], list_path, options, gpus.device, limit, json_path,
                         force, engine_hook(engine))
    click.echo(format_table(run.summary))
    for bad in run.bad:
        click.echo(f"skipped: {bad}")


@click.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_common
@click.option("--top", type=int, default=5, show_default=True, help="How many classes to print.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Class names, one per line [default: ILSVRC-2012 synset words for 1000 classes].")
@click.option("--scale", type=int, default=0, help="Test scale Q: rescale the smallest side to this before the "
                                                   "centre crop [default: the paper's Q = 256 for a 224 input, as "
                                                   "torchvision's Resize(256) + CenterCrop(224); the same 256/224 "
                                                   "ratio for other input sizes].")
def classify_command(images: tuple[str, ...], model: str, weights: str, mean_value: tuple[float, ...],
                     input_scale: float, gpus: Devices, engine: str, top: int, labels: str | None, scale: int) -> None:
    """Top-k classes of IMAGE... with their probabilities: each image rescaled to the paper's test scale
    (Q = 256 for a 224 net, --scale to choose another) and centre-cropped."""
    from vggproto.evaluation.classify import classify
    results = classify(list(images), model, weights, top=top, labels=labels, scale=scale, mean=mean_value,
                       device=gpus.device, input_scale=input_scale, engine=engine_hook(engine))
    for image, predictions in zip(images, results):
        click.echo(image)
        for rank, p in enumerate(predictions, 1):
            click.echo(f"  {rank}. {p.probability:.4f}  {p.name}")


@click.command("extract")
@_common
@click.option("--list", "list_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Caffe list file: '<image path> <label>' per line, or plain image paths (descriptors need "
                   "no labels; they are stored as -1).")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--blob", default="fc7", show_default=True, help="Blob to pool (fc7 is fc7-conv in a _dense net).")
@click.option("--scales", type=IntList(), default="256,384,512", show_default=True,
              help="Scales Q (smallest image side).")
@click.option("--aggregate", type=click.Choice(["stack", "average"]), default="average", show_default=True,
              help="Across scales: concatenate or average (then L2-normalise).")
@click.option("--workers", type=int, default=2, show_default=True, help="Image decoding processes (0: inline).")
@click.option("--skip-bad", is_flag=True, help="Leave unreadable images out instead of failing.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output HDF5 file.")
@force_option
def extract_command(model: str, weights: str, mean_value: tuple[float, ...], input_scale: float, gpus: Devices,
                    list_path: str, root: str, blob: str, scales: tuple[int, ...], aggregate: str, workers: int,
                    skip_bad: bool, out: str, force: bool, engine: str) -> None:
    """Appendix B image descriptors (dense net, global average pooling, flips, scales, L2) into an HDF5 file."""
    from vggproto.evaluation.run import extract_files
    features = extract_files(model, weights, list_path, out, blob=blob, scales=scales, how=aggregate, force=force,
                             root=root, mean=mean_value, device=gpus.device, workers=workers, skip_bad=skip_bad,
                             input_scale=input_scale, engine=engine_hook(engine))
    click.echo(f"wrote {features.features.shape[0]} x {features.features.shape[1]} features to {out}"
               + (f"; skipped {len(features.bad)} bad images" if features.bad else ""))


@click.command("detect")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="SSD deploy prototxt (one Input, a DetectionOutput layer).")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="caffemodel / .h5 / .pt / .safetensors weights.")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="Print boxes scoring at least this.")
@click.option("--draw", type=click.Path(dir_okay=False), help="Write the image with the boxes drawn here (PNG).")
@click.option("--mean-value", type=MeanValue(), default="104,117,123", show_default=True,
              help="BGR mean pixel subtracted (VGG-SSD 104,117,123; MobileNet-SSD 127.5).")
@click.option("--input-scale", type=float, default=1.0, show_default=True,
              help="Multiplies (pixel - mean) (VGG-SSD 1; MobileNet-SSD 0.007843).")
@click.option("--size", default=None, metavar="WxH", help="Resize the image to WxH [default: the net's input size].")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Label names: one per line (label 0 first) or an SSD labelmap prototxt [default: numbers].")
@gpus_option(help="GPU id, e.g. 0 (one device). Default: CPU.")
@engine_option
@force_option
def detect_command(image: str, model: str, weights: str, threshold: float, draw: str | None,
                   mean_value: tuple[float, ...], input_scale: float, size: str | None, labels: str | None,
                   gpus: Devices, engine: str, force: bool) -> None:
    """Boxes an SSD net finds in IMAGE: one 'label score xmin ymin xmax ymax' line (pixels) per box."""
    from vggproto.evaluation.detect import detect, parse_size
    boxes = detect(image, model, weights, threshold=threshold, mean=mean_value, input_scale=input_scale,
                   size=parse_size(size) if size else None, labels=labels, device=gpus.device, draw=draw,
                   force=force, engine=engine_hook(engine))
    for box in boxes:
        click.echo(box.line())


commands = [evaluate_command, classify_command, extract_command, detect_command]
