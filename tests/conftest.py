"""Fixtures shared by several test files."""
import shutil
import sys
from pathlib import Path

import pytest

SOLVER_GOLDEN = Path(__file__).parent / "data" / "golden" / "solver"
SOLVER_CASE_FILES = ("train.h5", "train_h5.txt", "train_val.prototxt", "init.caffemodel")


@pytest.fixture(autouse=True)
def _keep_torch_thread_count():
    """A test that changes torch's thread count does not change it for the tests after it in the same xdist
    worker (the bitwise-resume tests compare in-process runs with one-thread subprocesses).  torch is not imported
    here: a torch-free test stays torch-free."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if torch is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


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


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory):
    """The inference engine's graph cache (``--engine auto`` on the CPU exports and caches graphs) lives in a
    temporary folder for the test session, never in the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VGGPROTO_CACHE", str(tmp_path_factory.mktemp("engine-cache")))
        yield
