"""Fixtures shared by several test files."""
import shutil
from pathlib import Path

import pytest

SOLVER_GOLDEN = Path(__file__).parent / "data" / "golden" / "solver"
SOLVER_CASE_FILES = ("train.h5", "train_h5.txt", "train_val.prototxt", "init.caffemodel")


@pytest.fixture
def solver_workdir(tmp_path, monkeypatch):
    """Make a writable copy of the golden solver case (net, HDF5 data, init weights, plus ``extra`` files) the
    working directory, as Caffe ran with that folder as its CWD; returns the folder."""
    def make(subfolder: str = "", extra: tuple[str, ...] = ()) -> Path:
        folder = tmp_path / subfolder if subfolder else tmp_path
        folder.mkdir(exist_ok=True)
        for name in (*SOLVER_CASE_FILES, *extra):
            shutil.copy(SOLVER_GOLDEN / name, folder / name)
            (folder / name).chmod(0o644)
        monkeypatch.chdir(folder)
        return folder
    return make
