"""``vggproto convert-imageset`` and ``vggproto compute-mean``: Caffe's data preparation tools, registered under
Caffe's spellings too (``convert_imageset``, ``compute_image_mean``: commands/caffe_tools.py)."""
from __future__ import annotations

import click

from vggproto.commands.gflags import CaffeCommand
from vggproto.commands.options import force_option


@click.command("convert-imageset", cls=CaffeCommand)
@click.argument("root", metavar="ROOTFOLDER/")
@click.argument("list_file", metavar="LISTFILE", type=click.Path(dir_okay=False))
@click.argument("db", metavar="DB_NAME", type=click.Path())
@click.option("--resize-height", type=int, default=0, show_default=True, help="Resize to this height (with width).")
@click.option("--resize-width", type=int, default=0, show_default=True, help="Resize to this width (with height).")
@click.option("--shuffle", is_flag=True, help="Shuffle the list order (seeded by --seed).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --shuffle.")
@click.option("--gray", is_flag=True, help="Read images as grayscale.")
@click.option("--encoded", is_flag=True, help="Store encoded image bytes instead of raw pixels.")
@click.option("--encode-type", default="", help="Re-encode --encoded images as this type ('png', 'jpg', ...; "
              "default: keep each file's own encoding).")
@click.option("--check-size", is_flag=True, help="Require all raw images to have the same size.")
@click.option("--skip-bad", is_flag=True, help="Count and report unreadable images instead of failing.")
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True,
              help="Database to write (leveldb needs the plyvel package).")
@force_option
def convert_imageset_cmd(root: str, list_file: str, db: str, resize_height: int, resize_width: int, shuffle: bool,
                         seed: int, gray: bool, encoded: bool, encode_type: str, check_size: bool,
                         skip_bad: bool, backend: str, force: bool) -> None:
    """Write the images of LISTFILE (lines '<path> <label>', paths relative to ROOTFOLDER/) into a new LMDB
    DB_NAME that Caffe reads: keys %08d_<path>, Datum BGR CHW uint8 (or encoded bytes); or a LevelDB (--backend)."""
    from vggproto.data.convert import convert_imageset
    report = convert_imageset(root, list_file, db, resize_height, resize_width, shuffle, gray,
                              encoded or bool(encode_type), encode_type, check_size, skip_bad, seed,
                              backend=backend, force=force)
    click.echo(f"wrote {report.written} images to {db}" + (f"; skipped {len(report.bad)} bad images"
                                                             if report.bad else ""))


@click.command("compute-mean", cls=CaffeCommand)
@click.argument("db", metavar="INPUT_DB", type=click.Path())
@click.argument("out", metavar="[OUTPUT_FILE]", required=False, type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True)
@force_option
def compute_mean_cmd(db: str, out: str | None, backend: str, force: bool) -> None:
    """Write the per-pixel mean image of INPUT_DB as a 1xCxHxW BlobProto OUTPUT_FILE (.binaryproto; without it,
    only report); print the channel means."""
    from vggproto.data.convert import compute_mean_file
    click.echo("\n".join(compute_mean_file(db, out, backend, force)))


commands = [convert_imageset_cmd, compute_mean_cmd]
