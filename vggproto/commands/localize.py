"""``vggproto localize``: boxes for the top-5 classes (Appendix A of the paper), ILSVRC localisation errors."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vggproto.commands.engine_option import engine_hook, engine_option
from vggproto.commands.options import IntList, force_option, gpus_option, preprocess_options
from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    from vggproto.net.devices import Devices


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
@click.option("--scales", type=IntList(), default="256", show_default=True,
              help="Test scales Q (smallest image side).")
@click.option("--top", type=int, default=5, show_default=True, help="Classes that get a box.")
@click.option("--merge-threshold", type=float, default=0.5, show_default=True,
              help="Greedy merging: merge two boxes while centre distance / mean side + 1 - IoU is below this.")
@click.option("--list", "list_path", type=click.Path(exists=True, dir_okay=False),
              help="Box list: '<image> [<class> <x1> <y1> <x2> <y2> ...]'; with boxes the errors are reported.")
@click.option("--root", default="", help="Folder the list's paths are relative to.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="Class names, one per line.")
@preprocess_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every detection (and errors).")
@click.option("--draw", "draw_dir", type=click.Path(file_okay=False), help="Draw the boxes into OUT_DIR/<image>.png.")
@gpus_option()
@engine_option
@force_option
def localize_command(images: tuple[str, ...], models: tuple[str, ...], weights: tuple[str, ...],
                     cls_models: tuple[str, ...], cls_weights: tuple[str, ...], mode: str, scales: tuple[int, ...],
                     top: int, merge_threshold: float, list_path: str | None, root: str, labels: str | None,
                     mean_value: tuple[float, ...], input_scale: float, json_path: str | None,
                     draw_dir: str | None, gpus: Devices, engine: str, force: bool) -> None:
    """Predict a box for each of the top classes of IMAGES (or of --list) and, with ground truth, print the
    ILSVRC top-k localisation error and the GT-class error (box of the true class only)."""
    from vggproto.localize.predict import LocalizeOptions
    from vggproto.localize.run import localize_files
    if len(models) != len(weights) or len(cls_models) != len(cls_weights):
        raise VGGProtoError("give one --weights per --model and one --cls-weights per --cls-model")
    options = LocalizeOptions(mode, scales, top, merge_threshold, mean_value, input_scale)
    result, summary = localize_files(images, list_path, list(zip(models, weights)), list(zip(cls_models, cls_weights)),
                                     options, gpus.device, labels=labels, root=root, draw_dir=draw_dir,
                                     json_path=json_path, force=force, engine=engine_hook(engine))
    for item in result.images:
        click.echo(f"{item.path}: " + ", ".join(f"{d.name} {d.score:.3f} [{', '.join(f'{v:.0f}' for v in d.box)}]"
                                               for d in item.detections))
    if result.count.images:
        click.echo(f"mode {mode}, Q = {','.join(map(str, scales))}: top-{top} localisation error "
                   f"{summary['localization_error']:.2f}%, GT class localisation error "
                   f"{summary['gt_class_localization_error']:.2f}% ({result.count.images} images)")


commands = [localize_command]
