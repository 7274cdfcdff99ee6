"""Python layers must not run where nothing is run (issue 25): a model with a stray ``.py`` beside it is
inspected (``info``, ``draw``, ``upgrade``, ``convert``) without importing it, and commands that run the net import
a Python layer's module from PYTHONPATH only, as Caffe's tools do, never from the working directory.

The module writes a marker named after the folder it was imported from, so each test sees whether it ran and
from where; the CLI runs in a subprocess (``python -m vggproto``, whose ``-m`` puts the working directory on
``sys.path``) with the working directory and PYTHONPATH set as a user's shell would."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vggproto
from vggproto.errors import NetError

MODULE = "vggproto_trust_marker"
MARKER_MODULE = '''import os
folder = os.path.basename(os.path.dirname(os.path.abspath(__file__)))
open(os.path.join(os.environ["MARK_DIR"], "imported-from-" + folder), "w").close()


class Twice:
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''
DATA = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }\n'
PY = (f'layer {{ name: "py" type: "Python" bottom: "data" top: "y" '
      f'python_param {{ module: "{MODULE}" layer: "Twice" }} }}\n')
CONV = ('layer { name: "conv" type: "Convolution" bottom: "%s" top: "c" '
        'convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }\n')
ROOT = str(Path(vggproto.__file__).resolve().parent.parent)


@pytest.fixture
def model(tmp_path):
    """``work/`` (the working directory: net, weights and the module), ``pp/`` (the module again, for
    PYTHONPATH), ``marks/`` (where an import leaves its marker)."""
    work, pp, marks = (tmp_path / name for name in ("work", "pp", "marks"))
    for folder in (work, pp, marks):
        folder.mkdir()
        if folder != marks:
            (folder / f"{MODULE}.py").write_text(MARKER_MODULE)
    (work / "net.prototxt").write_text('name: "n"\n' + DATA + PY + CONV % "y")
    (work / "plain.prototxt").write_text('name: "n"\n' + DATA + CONV % "data")
    from vggproto.net import Net
    Net(str(work / "plain.prototxt")).save_weights(str(work / "w.caffemodel"))
    return work, pp, marks


def _run(args: list[str], work: Path, marks: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MARK_DIR": str(marks), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, *map(str, pythonpath)])}
    return subprocess.run([sys.executable, "-m", "vggproto", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)


def _marks(marks: Path) -> list[str]:
    return sorted(os.listdir(marks))


@pytest.mark.parametrize("args", [
    ["info", "net.prototxt"],
    ["draw", "net.prototxt", "net.dot"],
    ["upgrade", "net.prototxt", "up.prototxt"],
    ["upgrade_net_proto_text", "net.prototxt", "up2.prototxt"],
    ["convert", "--model", "net.prototxt", "w.caffemodel", "w.h5"],
], ids=lambda args: args[0])
def test_commands_that_do_not_run_the_net_never_import_it(model, args):
    work, pp, marks = model
    result = _run(args, work, marks, [pp])   # importable from both places: still never imported
    assert result.returncode == 0, result.stderr
    assert _marks(marks) == []
    if args[0] == "info":
        table = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()}
        assert re.search(r"y +unknown \[1\]", table["py"]) and "unknown [2]" in table["conv"]
        assert "[1] Python layer: its code runs only in commands that run the net" in result.stdout
        assert "[2] bottom 'y' has an unknown shape" in result.stdout
        assert "2 3 5 5 (150)" in table["data"]
    if args[0] == "draw":
        assert "py_Python" in (work / "net.dot").read_text()
    if args[0] == "convert":   # the conv after the Python layer keeps its weights (the file's shapes)
        import h5py
        with h5py.File(work / "w.h5") as handle:
            assert handle["data/conv/0"].shape == (2, 3, 3, 3)


@pytest.mark.slow   # two CLI runs each (about 2 x 2 s unloaded)
@pytest.mark.parametrize("args", [
    ["time", "net.prototxt", "--iterations", "1"],
    ["caffe", "time", "-model", "net.prototxt", "-iterations", "1"],
], ids=["time", "caffe-time"])
def test_commands_that_run_the_net_import_from_pythonpath_only(model, args):
    work, pp, marks = model
    refused = _run(args, work, marks, [])
    assert refused.returncode == 1 and _marks(marks) == []
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in refused.stderr
    assert f"python_param.module '{MODULE}' is not importable: set PYTHONPATH" in errors[0]
    ran = _run(args, work, marks, [pp])
    assert ran.returncode == 0, ran.stderr
    assert _marks(marks) == ["imported-from-pp"]


def test_library_net_imports_from_sys_path_only(model, monkeypatch):
    work, pp, marks = model
    monkeypatch.setenv("MARK_DIR", str(marks))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(work))])
    monkeypatch.chdir(work)
    with pytest.raises(NetError, match="is not importable: set PYTHONPATH"):
        vggproto.Net("net.prototxt")
    assert _marks(marks) == []
    monkeypatch.syspath_prepend(str(pp))
    import vggproto.pycaffe as caffe
    net = caffe.Net("net.prototxt", caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    net.forward(data=x)
    assert np.allclose(net.blobs["y"].data, 2 * x)
    assert _marks(marks) == ["imported-from-pp"]
