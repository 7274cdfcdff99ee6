"""Bad input never gives a traceback, is never silently accepted and never costs the user a file.

Generated malformed inputs (prototxt, caffemodel, HDF5, solverstate, solver, LMDB/Datum, list files, images, mean
files, command lines and output paths) each run through the CLI in-process.  Every one must end with exit
status 1 (2 for usage errors), no traceback, at most 3 lines of output naming the offending file (or option),
and every file that existed before the run unchanged.  Bad state left on disk between runs (a damaged engine cache
entry, a reproduce plan's outputs and markers; tests/bad_inputs_surfaces.py) may instead be repaired: exit 0, the
right result (``then``), and only the files the case names as the command's own state rewritten.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import bad_inputs_surfaces
import numpy as np
import pytest
from click.testing import CliRunner

import vggproto.cli
from vggproto.caffe.proto import caffe_pb2

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
FC = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n'
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


@dataclass
class Case:
    """One malformed input: ``build(folder)`` writes the files and returns the command line."""

    name: str
    build: Callable[[Path], list[str]]
    names: str            # what the output must mention (the offending file or option)
    code: int | tuple[int, ...] = 1
    says: str = ""        # what the message must say besides (the field, the range...), when it matters
    then: Callable[[Path, str], None] | None = None   # checks the result (a repaired state) or the next run
    may_change: tuple[str, ...] = ()   # globs of the files the command may rewrite (its cache, its plan's state)
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None   # environment, a full or read-only disk


CASES: list[Case] = []


def case(name: str, names: str, code: int = 1, says: str = "", **more) -> Callable:
    def add(build: Callable[[Path], list[str]]) -> Callable:
        CASES.append(Case(name, build, names, code, says, **more))
        return build
    return add


def write(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def small_caffemodel(count: int = 6, dims: tuple[int, ...] = (2, 3)) -> bytes:
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="fc", type="InnerProduct")
    blob = layer.blobs.add()
    blob.shape.dim.extend(dims)
    blob.data.extend([0.5] * count)
    return net.SerializeToString()


def datum(channels: int = 3, height: int = 4, width: int = 4, data: bytes | None = None, **more) -> bytes:
    d = caffe_pb2.Datum(channels=channels, height=height, width=width, label=0, **more)
    d.data = bytes(channels * height * width) if data is None else data
    return d.SerializeToString()


def lmdb_with(folder: Path, name: str, values: list[bytes]) -> str:
    import lmdb
    path = folder / name
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(f"{i:08d}".encode(), value)
    env.close()
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# prototxt (info and draw)
# ---------------------------------------------------------------------------------------------------------------

_BIG = 2 ** 40
PROTOTXTS: dict[str, str | bytes] = {
    "empty": "",
    "blank": "\n\n   \n",
    "only_comment": "# nothing here\n",
    "only_name": 'name: "x"\n',
    "enum_maxx": INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p"\n'
                         '  pooling_param { pool: MAXX kernel_size: 2 } }\n',
    "enum_number": INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: 7 } }\n',
    "unknown_field": INPUT + 'layer { name: "f" type: "ReLU" bottom: "data" top: "data" frobnicate: 3 }\n',
    "misspelled": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                          'convolution_param { num_outptu: 2 kernel_size: 3 } }\n',
    "unterminated": 'name: "abc\n' + INPUT,
    "garbage_10mb": 'name: "x"\n' + "garbage " * (10 * 1024 * 1024 // 8) + "\n",
    "long_string": 'name: "' + "x" * 5_000_000 + "\n",
    "long_token": "layer { name: " + "z" * 1_000_000 + " }\n",
    "non_utf8_string": INPUT.encode() + b'layer { name: "bad\xff\xfe" type: "ReLU" bottom: "data" top: "data" }\n',
    "non_utf8_comment": b"# caf\xe9 latin-1\n" + INPUT.encode(),
    "nul_bytes": INPUT.encode() + b"\x00\x00\x00",
    "conv_kernel_0": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                             'convolution_param { num_output: 2 kernel_size: 0 } }\n',
    "conv_kernel_big": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                               'convolution_param { num_output: 2 kernel_size: 11 pad: 1 } }\n',
    "conv_stride_0": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                             'convolution_param { num_output: 2 kernel_size: 3 stride: 0 } }\n',
    "conv_group": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                          'convolution_param { num_output: 2 kernel_size: 3 group: 2 } }\n',
    "conv_no_output": INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                              'convolution_param { kernel_size: 3 } }\n',
    "pool_kernel_big": INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                               'pooling_param { pool: MAX kernel_size: 11 } }\n',
    "pool_kernel_0": INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                             'pooling_param { pool: MAX kernel_size: 0 } }\n',
    "dim_minus_1": 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: -1 } } }\n',
    "dim_2_40": 'layer { name: "data" type: "Input" top: "data" '
                f'input_param {{ shape {{ dim: 1 dim: {_BIG} }} }} }}\n',
    "num_output_2_31": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                               'inner_product_param { num_output: 2147483648 } }\n',
    "num_output_neg": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                              'inner_product_param { num_output: -4 } }\n',
    "num_output_text": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                               'inner_product_param { num_output: "ten" } }\n',
    "num_output_huge": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                               'inner_product_param { num_output: 99999999999999999999999 } }\n',
    "num_output_four": INPUT + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c"\n'
                               '  convolution_param { num_output: four kernel_size: 3 } }\n',
    "bias_term_maybe": INPUT + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c"\n'
                               '  convolution_param { num_output: 2 bias_term: maybe kernel_size: 3 } }\n',
    "missing_colon": INPUT + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c"\n'
                             '  convolution_param { num_output 2 kernel_size: 3 } }\n',
    "pad_minus_1": INPUT + 'layer { name: "conv1" type: "Convolution" bottom: "data" top: "c"\n'
                           '  convolution_param { num_output: 2 kernel_size: 3 pad: -1 } }\n',
    "axis_huge": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
                         '  inner_product_param { num_output: 2 axis: 99999999999 } }\n',
    "std_beyond_float": INPUT + 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
                                '  inner_product_param { num_output: 2 weight_filler { std: 1e39 } } }\n',
    "unknown_type": INPUT + 'layer { name: "x" type: "Frobnicate" bottom: "data" top: "x" }\n',
    "missing_bottom": INPUT + 'layer { name: "r" type: "ReLU" bottom: "nothere" top: "r" }\n',
    "two_sources": INPUT + INPUT,
    "open_brace": INPUT + 'layer { name: "r" type: "ReLU" bottom: "data" top: "r"\n',
    "close_brace": INPUT + "}\n",
    "solver_as_net": 'base_lr: 0.01\nmax_iter: 10\nnet: "x.prototxt"\n',
    "eltwise_mismatch": INPUT + 'layer { name: "d2" type: "Input" top: "d2" input_param { shape { dim: 1 dim: 4 } } }\n'
                                'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "d2" top: "e" }\n',
    "jpeg_named_prototxt": JPEG,
    "png_named_prototxt": PNG,
    "hdf5_named_prototxt": b"\x89HDF\r\n\x1a\n" + bytes(100),
    "zip_named_prototxt": b"PK\x03\x04" + bytes(60),
    "random_bytes": random.Random(7).randbytes(4096),
    "long_layer_name": INPUT + 'layer { name: "%s" type: "Convolution" bottom: "data" top: "%s" '
                               'convolution_param { num_output: 2 kernel_size: 20 } }\n' % ("L" * 5000, "T" * 5000),
    "long_missing_bottom": INPUT + 'layer { name: "r" type: "ReLU" bottom: "%s" top: "r" }\n' % ("B" * 5000),
}

#: what the one line must say besides the file: the field with its message, and for numbers the field's range
PROTOTXT_SAYS = {
    "num_output_neg": "inner_product_param.num_output: -4 is out of range for a uint32 (0 to 4294967295)",
    "num_output_text": 'inner_product_param.num_output: expected an integer, got the string "ten"',
    "num_output_huge": "inner_product_param.num_output: 99999999999999999999999 is out of range for a uint32",
    "num_output_four": ":3:35: layer 'conv1': convolution_param.num_output: expected an integer, got \"four\"",
    "bias_term_maybe": ":3:48: layer 'conv1': convolution_param.bias_term: expected true or false, got \"maybe\"",
    "missing_colon": "layer 'conv1': convolution_param.num_output: expected \":\" after the field name, got \"2\"",
    "pad_minus_1": "layer 'conv1': convolution_param.pad: -1 is out of range for a uint32 (0 to 4294967295)",
    "axis_huge": "inner_product_param.axis: 99999999999 is out of range for an int32 (-2147483648 to 2147483647)",
    "std_beyond_float": "inner_product_param.weight_filler.std: 1e39 is out of range for a float (magnitude up to "
                        "3.402823e+38, or inf); Caffe would read it as infinity",
}

for _key, _text in PROTOTXTS.items():
    case(f"prototxt-info-{_key}", f"{_key}.prototxt", says=PROTOTXT_SAYS.get(_key, ""))(
        lambda d, k=_key, t=_text: ["info", write(d, f"{k}.prototxt", t)])

for _key in ("empty", "enum_maxx", "unterminated", "garbage_10mb", "jpeg_named_prototxt", "non_utf8_string"):
    case(f"prototxt-draw-{_key}", f"{_key}.prototxt")(
        lambda d, k=_key: ["draw", write(d, f"{k}.prototxt", PROTOTXTS[k]), str(d / "out.png")])


# ---------------------------------------------------------------------------------------------------------------
# caffemodel, HDF5, other weight files (info and convert)
# ---------------------------------------------------------------------------------------------------------------

CAFFEMODELS: dict[str, bytes] = {
    "zero_length": b"",
    "truncated": small_caffemodel()[:-7],
    "random": random.Random(3).randbytes(2048),
    "bad_wire_type": b"\x0f\xff\xff\xff",
    "varint_overflow": b"\x08" + b"\xff" * 11,
    "count_mismatch": small_caffemodel(count=5),
    "huge_shape": small_caffemodel(count=0, dims=(2 ** 20, 2 ** 20)),
    "jpeg": JPEG,
    "text": (INPUT + FC).encode(),
    "length_past_end": b"\x0a\xff\xff\xff\x0f" + bytes(10),
}
for _key, _data in CAFFEMODELS.items():
    case(f"caffemodel-info-{_key}", f"{_key}.caffemodel")(
        lambda d, k=_key, b=_data: ["info", write(d, f"{k}.caffemodel", b)])
    case(f"caffemodel-convert-{_key}", f"{_key}.caffemodel")(
        lambda d, k=_key, b=_data: ["convert", write(d, f"{k}.caffemodel", b), str(d / "out.h5")])


case("caffemodel-convert-torchvision-not-vgg", "lenet.caffemodel",
     says="lenet.caffemodel: layers ['fc'] have no torchvision VGG counterpart")(
    lambda d: ["convert", write(d, "lenet.caffemodel", small_caffemodel()), str(d / "out.pt"), "--to", "torchvision"])


def _h5(folder: Path, name: str, fill: Callable) -> str:
    import h5py
    path = folder / name
    with h5py.File(path, "w") as f:
        fill(f)
    return str(path)


HDF5S: dict[str, Callable[[Path], str]] = {
    "no_data_group": lambda d: _h5(d, "no_data_group.h5", lambda f: f.create_dataset("x", data=np.zeros(3))),
    "string_blob": lambda d: _h5(d, "string_blob.h5", lambda f: f.create_dataset("data/fc/0", data=b"abc")),
    "data_is_dataset": lambda d: _h5(d, "data_is_dataset.h5", lambda f: f.create_dataset("data", data=np.ones(2))),
    "truncated": lambda d: write(d, "truncated.h5", Path(HDF5S["no_data_group"](d)).read_bytes()[:300]),
    "signature_only": lambda d: write(d, "signature_only.h5", b"\x89HDF\r\n\x1a\n" + bytes(64)),
    "empty": lambda d: write(d, "empty.h5", b""),
    "random": lambda d: write(d, "random.h5", random.Random(5).randbytes(1000)),
}
for _key, _make in HDF5S.items():
    case(f"hdf5-convert-{_key}", f"{_key}.h5")(
        lambda d, m=_make: ["convert", m(d), str(d / "out.caffemodel")])
    case(f"hdf5-info-{_key}", f"{_key}.h5")(lambda d, m=_make: ["info", m(d)])

for _suffix, _data in {".pt": b"PK\x03\x04" + bytes(30), ".safetensors": b"\xff" * 8 + b"{}",
                       ".pth": b"\x80\x02garbage"}.items():
    case(f"weights-convert-bad{_suffix}", f"bad{_suffix}")(
        lambda d, s=_suffix, b=_data: ["convert", write(d, f"bad{s}", b), str(d / "out.caffemodel")])


# ---------------------------------------------------------------------------------------------------------------
# solver and solverstate (train)
# ---------------------------------------------------------------------------------------------------------------

TRAIN_NET = (INPUT + FC + 'layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 } } }\n'
             'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')

SOLVERS: dict[str, str | bytes] = {
    "unknown_field": 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nfrobnicate: 1\n',
    "bad_policy": 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "sometimes"\nmax_iter: 1\n',
    "base_lr_text": 'net: "net.prototxt"\nbase_lr: fast\n',
    "no_net": "base_lr: 0.1\nmax_iter: 1\n",
    "missing_net_file": 'net: "nothere.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n',
    "solver_type_enum": 'net: "net.prototxt"\nbase_lr: 0.1\nsolver_type: SGDD\n',
    "non_utf8": b'net: "net.prototxt"\n# \xff\xfe\n',
    "net_as_solver": INPUT,
    "empty": "",
    "base_lr_negative": 'net: "net.prototxt"\nlr_policy: "fixed"\nbase_lr: -0.01\nmax_iter: 1\n',
    "stepvalue_down": 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "multistep"\ngamma: 0.1\n'
                      'stepvalue: 5\nstepvalue: 3\nmax_iter: 1\n',
    "max_iter_huge": 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 9999999999\n',
    "momentum_maybe": 'net: "net.prototxt"\nbase_lr: 0.1\nmomentum 0.9\n',
}
SOLVER_SAYS = {
    "base_lr_text": ':2:10: base_lr: expected a number, got "fast"',
    "base_lr_negative": ":3: base_lr: -0.01 is negative, so the updates would climb the loss; Caffe would have "
                        "accepted it",
    "stepvalue_down": ":6: stepvalue: 3 does not increase (it follows 5)",
    "max_iter_huge": ":4:11: max_iter: 9999999999 is out of range for an int32 (-2147483648 to 2147483647)",
    "momentum_maybe": ':3:10: momentum: expected ":" after the field name, got "0.9"',
}
_CAFFE_ACCEPTS = ("no_net", "missing_net_file", "bad_policy", "empty", "base_lr_negative", "stepvalue_down")
for _key, _text in SOLVERS.items():
    def _solver(d: Path, k: str = _key, t: str | bytes = _text) -> list[str]:
        write(d, "net.prototxt", TRAIN_NET)
        return ["train", write(d, f"solver_{k}.prototxt", t)]
    case(f"solver-train-{_key}", "solver_" if _key != "missing_net_file" else "nothere.prototxt",
         says=SOLVER_SAYS.get(_key, ""))(_solver)
    if _key not in _CAFFE_ACCEPTS:  # upgrade only parses, as Caffe's tool
        case(f"solver-upgrade-{_key}", f"solver_{_key}")(
            lambda d, k=_key, t=_text: ["upgrade", "--kind", "solver", write(d, f"solver_{k}.prototxt", t),
                                        str(d / "up.prototxt")])

for _key, _data in {"random": random.Random(11).randbytes(512), "empty": b"", "jpeg": JPEG,
                    "truncated_h5": b"\x89HDF\r\n\x1a\n" + bytes(20)}.items():
    _suffix = ".solverstate.h5" if _key == "truncated_h5" else ".solverstate"

    def _state(d: Path, k: str = _key, b: bytes = _data, s: str = _suffix) -> list[str]:
        write(d, "net.prototxt", TRAIN_NET)
        solver = write(d, "solver.prototxt", 'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
                                             f'snapshot_prefix: "{d}/snap"\n')
        return ["train", solver, "--snapshot", write(d, f"state_{k}{s}", b)]
    case(f"solverstate-{_key}", f"state_{_key}")(_state)


# ---------------------------------------------------------------------------------------------------------------
# LMDB / Datum and mean files (compute-mean)
# ---------------------------------------------------------------------------------------------------------------

DBS: dict[str, Callable[[Path], str]] = {
    "not_datum": lambda d: lmdb_with(d, "not_datum", [b"\xff\xff\xff\xff"]),
    "short_data": lambda d: lmdb_with(d, "short_data", [datum(data=b"\x01\x02")]),
    "shape_change": lambda d: lmdb_with(d, "shape_change", [datum(), datum(height=5)]),
    "empty_db": lambda d: lmdb_with(d, "empty_db", []),
    "bad_encoded": lambda d: lmdb_with(d, "bad_encoded", [datum(data=b"notajpeg", encoded=True)]),
    "corrupt_file": lambda d: write(d, "corrupt_file/data.mdb", random.Random(1).randbytes(8192)),
    "empty_folder": lambda d: (d / "empty_folder").mkdir() or str(d / "empty_folder"),
    "zero_channels": lambda d: lmdb_with(d, "zero_channels", [datum(channels=0, data=b"")]),
}
for _key, _make in DBS.items():
    case(f"lmdb-compute-mean-{_key}", _key)(lambda d, m=_make: ["compute-mean", m(d), str(d / "mean.binaryproto")])

MEANS: dict[str, bytes] = {"random": random.Random(2).randbytes(100), "empty": b"", "jpeg": JPEG,
                           "wrong_size": caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2,
                                                             data=[1.0] * 5).SerializeToString()}
for _key, _data in MEANS.items():
    def _mean(d: Path, k: str = _key, b: bytes = _data) -> list[str]:
        db = lmdb_with(d, "db", [datum(), datum()])
        mean = write(d, f"mean_{k}.binaryproto", b)
        write(d, "net.prototxt", f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: '
                                 f'"{db}" batch_size: 1 }} transform_param {{ mean_file: "{mean}" }} }}\n')
        write(d, "w.caffemodel", caffe_pb2.NetParameter(name="n").SerializeToString())
        return ["test", "--model", str(d / "net.prototxt"), "--weights", str(d / "w.caffemodel"), "--iterations", "1"]
    case(f"mean-file-{_key}", f"mean_{_key}")(_mean)


# ---------------------------------------------------------------------------------------------------------------
# list files and images (convert-imageset)
# ---------------------------------------------------------------------------------------------------------------

IMAGES: dict[str, bytes] = {"truncated.jpg": JPEG[:12], "empty.jpg": b"", "text.jpg": b"hello world\n",
                            "badcrc.png": PNG, "random.jpg": random.Random(9).randbytes(300)}
for _name, _data in IMAGES.items():
    def _image(d: Path, n: str = _name, b: bytes = _data) -> list[str]:
        write(d, f"img/{n}", b)
        return ["convert-imageset", str(d / "img") + "/", write(d, "list.txt", f"{n} 0\n"), str(d / "db")]
    case(f"image-convert-imageset-{_name}", _name)(_image)

LISTS: dict[str, str | bytes] = {"missing_image": "nothere.jpg 0\n", "no_label": "a.jpg\n", "label_text": "a.jpg x\n",
                                 "empty": "", "non_utf8": b"caf\xe9.jpg 0\n", "binary": JPEG,
                                 "negative_label": "a.jpg -1x\n"}
for _key, _text in LISTS.items():
    case(f"list-convert-imageset-{_key}", "list_" if _key != "missing_image" else "nothere.jpg")(
        lambda d, k=_key, t=_text: ["convert-imageset", str(d) + "/", write(d, f"list_{k}.txt", t), str(d / "db")])


# ---------------------------------------------------------------------------------------------------------------
# outputs: never over an input, never over a file of another kind, a missing folder is one line
# ---------------------------------------------------------------------------------------------------------------

def _model(d: Path) -> tuple[str, str]:
    return write(d, "net.prototxt", INPUT + FC), write(d, "w.caffemodel", small_caffemodel())


case("out-extract-over-list", "list.txt")(lambda d: ["extract", "--model", _model(d)[0], "--weights", _model(d)[1],
                                                     "--list", write(d, "list.txt", "a.jpg 0\n"),
                                                     "--out", str(d / "list.txt")])
case("out-evaluate-json-over-list", "list.txt")(
    lambda d: ["evaluate", "--model", _model(d)[0], "--weights", _model(d)[1],
               "--list", write(d, "list.txt", "a.jpg 0\n"), "--json", str(d / "list.txt")])
case("out-upgrade-over-itself", "net.prototxt")(lambda d: ["upgrade", _model(d)[0], str(d / "net.prototxt")])
case("out-upgrade-prototxt-over-caffemodel", "old.prototxt")(
    lambda d: ["upgrade", _model(d)[0], write(d, "old.prototxt", small_caffemodel())])
case("out-upgrade-prototxt-over-jpeg", "photo.jpg")(
    lambda d: ["upgrade", _model(d)[0], write(d, "photo.jpg", JPEG)])
case("out-upgrade-over-jpeg-named-prototxt", "old.prototxt")(
    lambda d: ["upgrade", _model(d)[0], write(d, "old.prototxt", JPEG)])
case("out-upgrade-missing-folder", "nothere")(lambda d: ["upgrade", _model(d)[0], str(d / "nothere" / "x.prototxt")])
case("out-draw-over-input", "net.prototxt")(lambda d: ["draw", _model(d)[0], str(d / "net.prototxt")])
case("out-draw-missing-folder", "nothere")(lambda d: ["draw", _model(d)[0], str(d / "nothere" / "n.png")])
case("out-draw-over-caffemodel", "w.caffemodel")(lambda d: ["draw", _model(d)[0], _model(d)[1]])
case("out-convert-over-source", "w.caffemodel")(lambda d: ["convert", _model(d)[1], str(d / "w.caffemodel")])
case("out-convert-missing-folder", "nothere")(lambda d: ["convert", _model(d)[1], str(d / "nothere" / "w.h5")])
case("out-convert-h5-over-jpeg", "w.h5")(lambda d: ["convert", _model(d)[1], write(d, "w.h5", JPEG)])
case("out-compute-mean-missing-folder", "nothere")(
    lambda d: ["compute-mean", lmdb_with(d, "db", [datum()]), str(d / "nothere" / "m.binaryproto")])
case("out-compute-mean-over-prototxt", "net.prototxt")(
    lambda d: ["compute-mean", lmdb_with(d, "db", [datum()]), _model(d)[0]])
case("out-plot-over-log", "train.log")(
    lambda d: ["plot", write(d, "train.log", "I0101 00:00:00 solver.cpp:218] Iteration 0, loss = 1\n"),
               "--out", str(d / "train.log")])
case("out-plot-missing-folder", "nothere")(
    lambda d: ["plot", write(d, "train.log", "I0101 00:00:00 solver.cpp:218] Iteration 0, loss = 1\n"),
               "--out", str(d / "nothere" / "c.png")])
case("out-convert-imageset-over-list", "list.txt")(
    lambda d: ["convert-imageset", str(d) + "/", write(d, "list.txt", "a.jpg 0\n"), str(d / "list.txt")])
case("out-detect-draw-over-image", "photo.jpg")(
    lambda d: ["detect", write(d, "photo.jpg", JPEG), "--model", _model(d)[0], "--weights", _model(d)[1],
               "--draw", str(d / "photo.jpg")])

# ---------------------------------------------------------------------------------------------------------------
# command lines (usage errors: exit 2)
# ---------------------------------------------------------------------------------------------------------------

USAGE: dict[str, Callable[[Path], list[str]]] = {
    "test-iterations-0": lambda d: ["test", "--model", _model(d)[0], "--weights", _model(d)[1], "--iterations", "0"],
    "test-iterations-neg": lambda d: ["test", "--model", _model(d)[0], "--weights", _model(d)[1],
                                      "--iterations", "-1"],
    "caffe-test-iterations-0": lambda d: ["caffe", "test", "--model", _model(d)[0], "--weights", _model(d)[1],
                                          "--iterations", "0"],
    "unknown-option": lambda d: ["info", _model(d)[0], "--frobnicate"],
    "unknown-command": lambda d: ["frobnicate"],
    "missing-argument": lambda d: ["upgrade", _model(d)[0]],
    "missing-input-file": lambda d: ["draw", str(d / "nothere.prototxt"), str(d / "o.png")],
    "bad-mean-value": lambda d: ["evaluate", "--model", _model(d)[0], "--weights", _model(d)[1],
                                 "--list", write(d, "l.txt", "a.jpg 0\n"), "--mean-value", "a,b,c"],
    "bad-scales": lambda d: ["extract", "--model", _model(d)[0], "--weights", _model(d)[1],
                             "--list", write(d, "l.txt", "a.jpg 0\n"), "--out", str(d / "f.h5"), "--scales", "x"],
    "bad-gpu": lambda d: ["test", "--model", _model(d)[0], "--weights", _model(d)[1], "--gpu", "banana"],
    "bad-phase": lambda d: ["info", _model(d)[0], "--phase", "SOMETIMES"],
    "time-iterations-0": lambda d: ["time", _model(d)[0], "--iterations", "0"],
}
_USAGE_NAMES = {"test-iterations-0": "--iterations", "test-iterations-neg": "--iterations",
                "caffe-test-iterations-0": "--iterations", "unknown-option": "--frobnicate",
                "unknown-command": "frobnicate", "missing-argument": "DST", "missing-input-file": "nothere.prototxt",
                "bad-mean-value": "mean", "bad-scales": "scales", "bad-gpu": "banana", "bad-phase": "SOMETIMES",
                "time-iterations-0": "iterations"}
for _key, _make in USAGE.items():   # a bad option value is a usage error, whichever type parses it
    case(f"usage-{_key}", _USAGE_NAMES[_key], code=2)(_make)


# ---------------------------------------------------------------------------------------------------------------
# pycaffe calls (vggproto.pycaffe): one vggproto error naming what exists, still the KeyError/ValueError/TypeError
# a pycaffe script may catch
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Call:
    """One pycaffe call with a wrong argument: ``run(folder)`` writes the files and makes the call."""

    name: str
    run: Callable[[Path], object]
    also: type            # what the error must also be, besides a VGGProtoError
    says: str             # what the message must say (what exists, the file, the shape)


def _pycaffe_net(d: Path, phase: int = 1):
    import vggproto.pycaffe as caffe
    return caffe.Net(write(d, "net.prototxt", INPUT + FC), phase)


def _pycaffe_solver(d: Path, text: str):
    import vggproto.pycaffe as caffe
    write(d, "net.prototxt", TRAIN_NET)
    return caffe.SGDSolver(write(d, "solver.prototxt", text))


_ZEROS = np.zeros((2, 2), np.float32)
PYCAFFE_CALLS: list[Call] = [
    Call("blobs-unknown", lambda d: _pycaffe_net(d).blobs["nope"], KeyError,
         "net.blobs['nope']: no blob of that name; net.blobs has: data, fc"),
    Call("params-unknown", lambda d: _pycaffe_net(d).params["data"], KeyError, "net.params has: fc"),
    Call("layer-dict-unknown", lambda d: _pycaffe_net(d).layer_dict["nope"], KeyError,
         "net.layer_dict has: data, fc"),
    Call("top-names-unknown", lambda d: _pycaffe_net(d).top_names["nope"], KeyError, "net.top_names has: data, fc"),
    Call("bottom-names-unknown", lambda d: _pycaffe_net(d).bottom_names[3], KeyError, "net.bottom_names[3]"),
    Call("forward-unknown-input", lambda d: _pycaffe_net(d).forward(fc=_ZEROS), KeyError,
         "net.forward(fc=...): no input blob of that name; net.inputs has: data"),
    Call("forward-unknown-blob", lambda d: _pycaffe_net(d).forward(blobs=["nope"]), KeyError,
         "net.forward(blobs=['nope']): no blob of that name; net.blobs has: data, fc"),
    Call("forward-unknown-end", lambda d: _pycaffe_net(d).forward(end="nope"), KeyError,
         "net.forward(end='nope'): no layer of that name; net.layer_dict has: data, fc"),
    Call("forward-unknown-start", lambda d: _pycaffe_net(d).forward(start="nope"), KeyError, "net.layer_dict has"),
    Call("backward-unknown-diff", lambda d: _pycaffe_net(d).backward(diffs=["nope"]), KeyError, "net.blobs has"),
    Call("backward-unknown-top", lambda d: _pycaffe_net(d).backward(data=_ZEROS), KeyError,
         "net.backward(data=...): no top to start from of that name; net.outputs has: fc"),
    Call("backward-wrong-diff-shape", lambda d: _pycaffe_net(d).backward(fc=np.zeros(7)), ValueError,
         "net.backward(fc=...): (7,) does not fit the blob's shape (1, 2)"),
    Call("forward-wrong-shape", lambda d: _pycaffe_net(d).forward(data=np.zeros((1, 3, 4, 4))), ValueError,
         "net.prototxt:2: layer 'fc' (InnerProduct): parameters of shapes [(2, 192), (2,)] do not fit the bottoms "
         "after reshaping data (1, 3, 4, 4)"),
    Call("forward-wrong-rank", lambda d: _pycaffe_net(d).forward(data=np.zeros((3, 8, 8))), ValueError,
         "net.prototxt:2: layer 'fc' (InnerProduct)"),
    Call("forward-not-numbers", lambda d: _pycaffe_net(d).forward(data="cat.jpg"), ValueError,
         "net.forward(data=...): not an array of numbers (a str)"),
    Call("blob-data-wrong-shape", lambda d: setattr(_pycaffe_net(d).blobs["data"], "data", _ZEROS), ValueError,
         "net.blobs['data'].data = an array of shape (2, 2): does not fit the blob's shape (1, 3, 8, 8)"),
    Call("blob-diff-wrong-shape", lambda d: setattr(_pycaffe_net(d).blobs["fc"], "diff", np.zeros(3)), ValueError,
         "net.blobs['fc'].diff = an array of shape (3,)"),
    Call("param-data-wrong-shape", lambda d: setattr(_pycaffe_net(d).params["fc"][0], "data", _ZEROS), ValueError,
         "net.params['fc'][0].data = an array of shape (2, 2): does not fit the blob's shape (2, 192)"),
    Call("blob-reshape-negative", lambda d: _pycaffe_net(d).blobs["data"].reshape(1, -3), ValueError,
         "net.blobs['data'].reshape(1, -3): a shape is non-negative integers"),
    Call("set-input-arrays-3d", lambda d: _pycaffe_net(d).set_input_arrays(np.zeros((2, 8, 8)), np.zeros(2)),
         ValueError, "needs 4-d data (N, C, H, W)"),
    Call("phase-5", lambda d: _pycaffe_net(d, 5), ValueError, "phase 5 is neither caffe.TRAIN (0) nor caffe.TEST (1)"),
    Call("phase-word", lambda d: _pycaffe_net(d, "deploy"), TypeError, "caffe.Net needs a phase"),
    Call("weights-missing", lambda d: _pycaffe_net(d).copy_from(str(d / "nothere.caffemodel")), Exception,
         "nothere.caffemodel"),
    Call("weights-jpeg", lambda d: _pycaffe_net(d).copy_from(write(d, "photo.caffemodel", JPEG)), Exception,
         "photo.caffemodel"),
    Call("model-missing", lambda d: __import__("vggproto.pycaffe").pycaffe.Net(str(d / "nothere.prototxt"), 1),
         Exception, "nothere.prototxt"),
    Call("solver-bad-field", lambda d: _pycaffe_solver(d, 'net: "net.prototxt"\nbase_lr: 0.1\nfrobnicate: 1\n'),
         Exception, "solver.prototxt:3:1: unknown field 'frobnicate'"),
    Call("solver-bad-value", lambda d: _pycaffe_solver(d, 'net: "net.prototxt"\nbase_lr: fast\n'), Exception,
         'solver.prototxt:2:10: base_lr: expected a number, got "fast"'),
    Call("solver-missing-net", lambda d: _pycaffe_solver(d, 'net: "nothere.prototxt"\nbase_lr: 0.1\n'
                                                            'lr_policy: "fixed"\n'), Exception, "nothere.prototxt"),
    Call("solver-no-policy", lambda d: _pycaffe_solver(d, 'net: "net.prototxt"\nbase_lr: 0.1\n'), Exception,
         "solver.prototxt: unknown lr_policy ''; supported: fixed"),
    Call("solver-missing", lambda d: __import__("vggproto.pycaffe").pycaffe.get_solver(str(d / "nothere.prototxt")),
         Exception, "nothere.prototxt"),
]


# ---------------------------------------------------------------------------------------------------------------
# the engine cache and reproduce's state between runs (issue 29 item 4)
# ---------------------------------------------------------------------------------------------------------------

bad_inputs_surfaces.engine_cases(case)
bad_inputs_surfaces.reproduce_cases(case)


# ---------------------------------------------------------------------------------------------------------------

def _hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[Path, str]:
    """Every file's sha256 but those matching ``skip`` (opened directly: a case may break Path.read_bytes)."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not any(fnmatch.fnmatch(path.relative_to(folder).as_posix(), g) for g in skip):
            with open(path, "rb") as handle:
                found[path] = hashlib.sha256(handle.read()).hexdigest()
    return found


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_loses_nothing(bad: Case, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    args = bad.build(tmp_path)
    if bad.patch is not None:
        bad.patch(monkeypatch, tmp_path)
    before = _hashes(tmp_path, bad.may_change)
    with caplog.at_level(logging.WARNING, logger="vggproto"):
        result = CliRunner().invoke(vggproto.cli.main, args)
    output = result.output
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{args}: raised {type(result.exception).__name__}: {result.exception}"
    assert "Traceback" not in output
    codes = bad.code if isinstance(bad.code, tuple) else (bad.code,)
    assert result.exit_code in codes, f"{args}: exit {result.exit_code}: {output[:2000]}"
    said = output + caplog.text   # a repaired state is announced in a warning (logged to stderr)
    if bad.code != 0:
        assert len(lines) <= 3, output[:2000]
        assert len(output) < 2000, output[:2000]
    assert bad.names in said, f"{bad.names!r} not named in {said[:2000]!r}"
    assert bad.says in said, f"{bad.says!r} not said in {said[:2000]!r}"
    assert _hashes(tmp_path, bad.may_change).items() >= before.items(), "an input file was changed"
    if bad.then is not None:
        bad.then(tmp_path, output)


@pytest.mark.slow   # two interpreters start at once: about 15 s on the shared 2-core machine
def test_two_processes_repair_one_damaged_cache_entry_at_once(tmp_path: Path) -> None:
    bad_inputs_surfaces.two_processes_repair_one_entry(tmp_path)


def test_kill_9_of_a_real_reproduce_mid_step_resumes(tmp_path: Path) -> None:
    bad_inputs_surfaces.killed_real_plan_resumes(tmp_path)


def test_there_is_a_pycaffe_section():
    assert len(PYCAFFE_CALLS) >= 25, len(PYCAFFE_CALLS)


@pytest.mark.parametrize("bad", PYCAFFE_CALLS, ids=[c.name for c in PYCAFFE_CALLS])
def test_bad_pycaffe_call_is_one_clear_error(bad: Call, tmp_path: Path, monkeypatch) -> None:
    from vggproto.errors import VGGProtoError
    monkeypatch.chdir(tmp_path)
    before = _hashes(tmp_path)
    with pytest.raises(VGGProtoError) as raised:
        bad.run(tmp_path)
    message = str(raised.value)
    assert isinstance(raised.value, bad.also), f"{type(raised.value).__name__} is not a {bad.also.__name__}"
    assert "\n" not in message and len(message) < 2000, message
    assert bad.says in message, f"{bad.says!r} not said in {message!r}"
    assert _hashes(tmp_path).items() >= before.items(), "an input file was changed"
