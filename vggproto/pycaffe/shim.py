"""A top-level ``caffe`` package that is vggproto.pycaffe, so unmodified scripts (``import caffe``) run.

``python -m vggproto.pycaffe.shim [--target DIR]`` writes ``DIR/caffe/__init__.py`` (default: the first
site-packages directory), refusing when a ``caffe`` that is not this shim is importable (a real pycaffe must not
be shadowed by accident).  The written package makes ``caffe`` and its submodules (``caffe.io``,
``caffe.proto.caffe_pb2``, ``caffe.net_spec``, ``caffe.classifier``, ``caffe.detector``, ``caffe.draw``…) the very
modules of vggproto.pycaffe, so classes and state are shared with code importing either name.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import site
import sys
from pathlib import Path

from vggproto.caffe.files import atomic_write_bytes
from vggproto.errors import VGGProtoError

MARKER = "# vggproto caffe shim"

SHIM = MARKER + '''
"""caffe: this is vggproto's pycaffe (vggproto.pycaffe), installed by ``python -m vggproto.pycaffe.shim``."""
import importlib
import sys

import vggproto.pycaffe as _pycaffe

for _name, _target in (("io", "io"), ("proto", "proto"), ("proto.caffe_pb2", "proto.caffe_pb2"),
                       ("net_spec", "net_spec"), ("classifier", "classifier"), ("detector", "classifier"),
                       ("pycaffe", "net"), ("draw", "draw"), ("coord_map", "coord_map")):
    sys.modules["caffe." + _name] = importlib.import_module("vggproto.pycaffe." + _target)
sys.modules[__name__] = _pycaffe
'''


def existing_caffe() -> str | None:
    """Where an importable ``caffe`` that is not this shim lives (None when there is none or it is the shim)."""
    spec = importlib.util.find_spec("caffe")
    if spec is None or spec.origin is None:
        return None
    try:
        if Path(spec.origin).read_text(encoding="utf-8").startswith(MARKER):
            return None
    except OSError:
        pass
    return spec.origin


def install_shim(target: str | os.PathLike | None = None) -> Path:
    """Write the shim package into ``target`` (default: site-packages); the path of its ``__init__.py``."""
    found = existing_caffe()
    if found is not None:
        raise VGGProtoError(f"a real 'caffe' module is importable ({found}); not shadowing it with the shim")
    folder = Path(target) if target is not None else Path(site.getsitepackages()[0])
    init = folder / "caffe" / "__init__.py"
    try:
        init.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(init, SHIM.encode("utf-8"))
    except OSError as exc:
        raise VGGProtoError(f"{exc.filename or init}: cannot write the caffe shim: {exc.strerror}") from None
    return init


def main(argv: list[str] | None = None) -> int:
    """``python -m vggproto.pycaffe.shim``: install the shim, report where."""
    parser = argparse.ArgumentParser(prog="python -m vggproto.pycaffe.shim", description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="directory to write caffe/ into (default: site-packages)")
    args = parser.parse_args(argv)
    try:
        path = install_shim(args.target)
    except VGGProtoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"installed the caffe shim at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
