"""What ``vggproto upgrade`` and ``vggproto info`` do to a file, as library calls (Caffe's upgrade_net_proto_text,
upgrade_net_proto_binary and upgrade_solver_proto_text tools, and a description of a weights file).

Here, in the weights package, because a binary caffemodel is upgraded by streaming its blobs
(:func:`vggproto.weights.caffemodel.upgrade_caffemodel`) rather than decoding them through protobuf; nothing
here imports torch, so both commands start instantly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from vggproto.caffe.files import check_output
from vggproto.caffe.prototxt import (
    BINARY_SUFFIXES,
    load_source,
    read_net,
    read_solver,
    sniff_binary,
    write_net,
    write_solver,
)
from vggproto.errors import PrototxtError
from vggproto.weights.caffemodel import read_caffemodel, upgrade_caffemodel

FileKind = Literal["auto", "net", "solver"]
WEIGHT_SUFFIXES = (".caffemodel", ".h5", ".hdf5")
_NET_TOKENS = ("layer {", "layers {", "layer{", "layers{", "input:")
_SOLVER_TOKENS = ("base_lr", "solver_type", "lr_policy", "max_iter", "train_net", "net:")


def is_solver_file(path: str | os.PathLike) -> bool:
    """A text file whose top-level fields are solver fields (``base_lr``, ``net``, ...) and no layers."""
    content, _ = load_source(os.fspath(path))
    if sniff_binary(content, os.fspath(path)):
        return False
    head = content.decode("utf-8", errors="replace")
    return not any(tok in head for tok in _NET_TOKENS) and any(tok in head for tok in _SOLVER_TOKENS)


def is_weights_file(path: str | os.PathLike) -> bool:
    """A caffemodel or Caffe HDF5 file (by extension, else because it is not text); unreadable files count as
    weights so that the weights reader gives the precise message."""
    if Path(path).suffix.lower() in WEIGHT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)   # the sniff needs only the start: never read a whole caffemodel here
        return sniff_binary(head, os.fspath(path))
    except (PrototxtError, OSError):
        return True


def upgrade_file(src: str | os.PathLike, dst: str | os.PathLike, kind: FileKind = "auto",
                 dialect: str | None = None, to_bvlc: bool = False, force: bool = False) -> list[str]:
    """Upgrade a net (text or binary, V0/V1 -> V2) or a solver from ``src`` into ``dst`` (text or binary by
    ``dst``'s extension); return the lines the command prints.  caffemodel -> caffemodel streams the blobs
    verbatim (legacy dims and encodings kept, as Caffe's tool keeps them).  ``to_bvlc`` also rewrites a fork
    net into BVLC fields where an exact equivalent exists (:mod:`vggproto.caffe.to_bvlc`) and lists what has
    none."""
    check_output(dst, inputs=(src,), kind="binary" if Path(dst).suffix.lower() in BINARY_SUFFIXES else "text",
                 force=force)
    if kind == "solver" or (kind == "auto" and is_solver_file(src)):
        write_solver(read_solver(src, resolve_prefix=False, dialect=dialect), dst)
        return [f"Wrote upgraded solver to {dst}"]
    notes: list[str] = []
    if Path(src).suffix.lower() == Path(dst).suffix.lower() == ".caffemodel" and not to_bvlc and dialect is None:
        net = upgrade_caffemodel(src, dst)
    else:
        net = read_net(src, dialect=dialect)
        if to_bvlc:
            from vggproto.caffe.to_bvlc import to_bvlc as rewrite
            done, none = rewrite(net)
            notes = [f"  {line}" for line in done] + [f"  no BVLC equivalent: {line}" for line in none]
        write_net(net, dst, dialect=None if to_bvlc else dialect)
    return [f"Wrote upgraded net '{net.name}' ({len(net.layer)} layers) to {dst}", *notes]


def describe_weights(path: str | os.PathLike) -> str:
    """Every layer of a caffemodel or Caffe HDF5 file with its blob shapes and parameter count, and the total."""
    net, weights = read_caffemodel(path)
    types = {layer.name: layer.type for layer in net.layer}
    lines = [f"weights '{path}' (net '{net.name}'): {len(net.layer)} layers, {len(weights)} with blobs"]
    total = 0
    for name, blobs in weights.items():
        count = sum(int(b.size) for b in blobs)
        total += count
        shapes = "  ".join("x".join(str(d) for d in b.shape) for b in blobs)
        lines.append(f"  {name:<20} {types.get(name, '?'):<14} {shapes:<40} {count:>12,d}")
    lines.append(f"Total parameters: {total:,d}")
    return "\n".join(lines)
