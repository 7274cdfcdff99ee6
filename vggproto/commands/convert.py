"""``vggproto convert``: weight conversion between Caffe, PyTorch, safetensors, torchvision, ONNX and ncnn."""
from __future__ import annotations

import click

from vggproto.commands.options import NameList, dialect_option, force_option
from vggproto.weights.torch_files import FORMATS


@click.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False, writable=True))
@click.option("--model", "model", type=click.Path(exists=True, dir_okay=False),
              help="Net prototxt: blobs take its shapes and its layers are checked (required for --to onnx and ncnn).")
@click.option("--to", "to", type=click.Choice(FORMATS),
              help="Output format (default: from DST's extension; .pt/.pth = Caffe-named state dict; .param = ncnn, "
                   "its .bin beside it).")
@click.option("--fc-to-conv", is_flag=True, help="fc6/fc7/fc8 -> fc6-conv/fc7-conv/fc8-conv of the _dense net.")
@click.option("--conv-to-fc", is_flag=True, help="fc6-conv/fc7-conv/fc8-conv -> fc6/fc7/fc8.")
@click.option("--allow-missing", is_flag=True, help="With --model: leave out net layers the file has no weights for.")
@click.option("--keep-shapes", is_flag=True, help="Keep stored blob shapes (no legacy 4-D normalisation).")
@click.option("--zip-crc", is_flag=True,
              help="Compute the zip CRC32s of .pt/.pth output (torch.load ignores them; slower).")
@click.option("--phase", type=click.Choice(["TEST", "TRAIN"]), default="TEST", show_default=True,
              help="Phase the --model net is built in.")
@click.option("--outputs", type=NameList(), default=None,
              help="ONNX: the blobs to export, comma-separated (default: the net's outputs).")
@dialect_option
@force_option
def convert_command(src: str, dst: str, model: str | None, to: str | None, fc_to_conv: bool, conv_to_fc: bool,
                    allow_missing: bool, keep_shapes: bool, zip_crc: bool, phase: str, outputs: tuple[str, ...] | None,
                    dialect: str | None, force: bool) -> None:
    """Convert weights SRC (caffemodel V1/V2, Caffe HDF5, .pt, .safetensors, torchvision VGG) into DST.

    \b
    Formats: caffemodel | h5 (Caffe HDF5, /data/<layer>/<i>) | pt | safetensors (keys <layer>.weight,
    <layer>.bias, <layer>.<i> for further blobs) | torchvision (features.N / classifier.N, RGB [0,1] mean/std
    input folded into conv1_1) | onnx (the --model net with these weights, checked in onnxruntime) | ncnn
    (DST.param and DST.bin: the --model net for ncnn's own tools).
    """
    from vggproto.convert.convert import convert, summary
    result = convert(src, dst, to=to, model=model, fc_to_conv_=fc_to_conv, conv_to_fc_=conv_to_fc,
                     allow_missing=allow_missing, keep_shapes=keep_shapes, phase=phase, zip_crc=zip_crc,
                     dialect=dialect, force=force, outputs=outputs)
    title = f"{src} ({result.source_format}) -> {dst} ({result.format})"
    if result.ignored:
        title += f"\nignored source layers: {', '.join(result.ignored)}"
    if result.missing:
        title += f"\nleft out (no weights): {', '.join(result.missing)}"
    for note in result.notes:
        title += f"\n{note}"
    click.echo(summary(result.weights, title))


commands = [convert_command]
