"""``vggproto localize``: boxes for the top-5 classes (Appendix A of the paper), ILSVRC localisation errors."""
from __future__ import annotations

import json
import logging

import click

from vggproto.commands.evaluation import _MEAN, _device, _floats, _ints
from vggproto.errors import VGGProtoError

log = logging.getLogger("vggproto.localize.predict")


@click.command("localize")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "models", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Localisation deploy (or _dense) prototxt; repeat with --weights to take the union of several "
                   "nets' boxes.")
@click.option("--weights", "weights", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Weights of each --model, in the same order.")
@click.option("--cls-model", "cls_models", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False), help="Classification deploy prototxt (repeatable: fused).")
@click.option("--cls-weights", "cls_weights", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False), help="Weights of each --cls-model.")
@click.option("--mode", type=click.Choice(["center", "dense"]), default="center", show_default=True,
              help="center: the centre crop per scale; dense: every window of the whole image, greedily merged.")
@click.option("--scales", default="256", show_default=True, help="Test scales Q (smallest image side).")
@click.option("--top", type=int, default=5, show_default=True, help="Classes that get a box.")
@click.option("--merge-threshold", type=float, default=0.5, show_default=True,
              help="Greedy merging: merge two boxes while centre distance / mean side + 1 - IoU is below this.")
@click.option("--list", "list_path", type=click.Path(exists=True, dir_okay=False),
              help="Box list: '<image> [<class> <x1> <y1> <x2> <y2> ...]'; with boxes the errors are reported.")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@click.option("--mean-value", default=_MEAN, show_default=True, help="BGR mean pixel subtracted.")
@click.option("--input-scale", type=float, default=1.0, show_default=True,
              help="Multiplies (pixel - mean), like the training net's transform_param.scale.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every detection (and errors).")
@click.option("--draw", "draw_dir", type=click.Path(file_okay=False), help="Draw the boxes into OUT_DIR/<image>.png.")
@click.option("--gpus", "--gpu", "gpus", help="GPU id. Default: CPU.")
def localize_command(images, models, weights, cls_models, cls_weights, mode, scales, top, merge_threshold,
                     list_path, root, labels, mean_value, input_scale, json_path, draw_dir, gpus) -> None:
    """Predict a box for each of the top classes of IMAGES (or of --list) and, with ground truth, print the
    ILSVRC top-k localisation error and the GT-class error (box of the true class only)."""
    from vggproto.data.boxes import parse_box_list
    from vggproto.evaluation.classify import class_names
    from vggproto.evaluation.evaluate import load_model
    from vggproto.localize.predict import LocalizeOptions, load_loc_model
    from vggproto.localize.run import check_classes, draw, image_entries, localize_entries
    if len(models) != len(weights) or len(cls_models) != len(cls_weights):
        raise VGGProtoError("give one --weights per --model and one --cls-weights per --cls-model")
    if bool(images) == bool(list_path):
        raise VGGProtoError("give IMAGES or --list (not both)")
    if top < 1:
        raise VGGProtoError(f"--top must be at least 1, got {top}")
    options = LocalizeOptions(mode, _ints(scales, "--scales"), top, merge_threshold,
                              _floats(mean_value, "--mean-value"), input_scale)
    device = _device(gpus)
    locs = [load_loc_model(m, w, device) for m, w in zip(models, weights)]
    clss = [load_model(m, w, device) for m, w in zip(cls_models, cls_weights)]
    classes = clss[0].num_classes
    names = class_names(classes, labels)
    entries = parse_box_list(list_path, need_boxes=False) if list_path else image_entries(images)
    if list_path:
        check_classes(entries, classes, list_path)
    result = localize_entries(entries, locs, clss, options, names, root, progress=True)
    for item in result.images:
        shown = ", ".join(f"{d.name} {d.score:.3f} [{', '.join(f'{v:.0f}' for v in d.box)}]"
                          for d in item.detections)
        click.echo(f"{item.path}: {shown}")
        if draw_dir:
            draw(item, draw_dir, root)
    summary = result.as_dict(options, [m.label for m in locs])
    if result.count.images:
        click.echo(f"mode {mode}, Q = {scales}: top-{top} localisation error {summary['localization_error']:.2f}%, "
                   f"GT class localisation error {summary['gt_class_localization_error']:.2f}% "
                   f"({result.count.images} images)")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)


commands = [localize_command]
