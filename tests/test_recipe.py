"""The README's ImageNet recipe, followed as a new user would (issue #28): each stumble it hit, fixed and kept so.

1. chained solvers (and the localisation solvers) name the snapshot the previous stage of *this* run writes;
2. ``--plateau-patience`` is the paper's plateau-only schedule, not drops stacked on the solver's steps;
3. ``--batch-size`` alone says what iter_size it wrote;
4. ``train`` checks the snapshot folder before building any net (Caffe's order);
5. the README states the init the nets use, in the paper's words.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggproto.caffe.prototxt import read_solver
from vggproto.cli import main
from vggproto.errors import SolverError
from vggproto.train.solver import Solver, TrainOptions

ROOT = Path(__file__).resolve().parents[1]


def _generate(tmp_path: Path, *args: str):
    result = CliRunner().invoke(main, ["generate", "--out-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return result


def test_chained_solvers_name_the_generated_length_snapshot(tmp_path):
    _generate(tmp_path, "--config", "D", "--max-iter", "3", "--global-batch", "256")
    s384 = read_solver(tmp_path / "solvers" / "D_S384.prototxt", resolve_prefix=False)
    multi = read_solver(tmp_path / "solvers" / "D_S256-512.prototxt", resolve_prefix=False)
    assert list(s384.weights) == ["snapshots/D_iter_3.caffemodel"]
    assert list(multi.weights) == ["snapshots/D_S384_iter_3.caffemodel"]


def test_localisation_solver_names_the_generated_length_snapshot(tmp_path):
    _generate(tmp_path, "--config", "D", "--task", "localization", "--scale", "384", "--max-iter", "5")
    loc = read_solver(tmp_path / "solvers" / "D_loc_scr.prototxt", resolve_prefix=False)
    assert list(loc.weights) == ["snapshots/D_S384_iter_5.caffemodel"]


def test_batch_size_alone_says_what_iter_size_it_wrote(tmp_path):
    result = _generate(tmp_path, "--config", "A", "--batch-size", "2")
    assert "iter_size: 128" in result.output and "--global-batch 2" in result.output
    assert read_solver(tmp_path / "solvers" / "A.prototxt", resolve_prefix=False).iter_size == 128
    quiet = _generate(tmp_path, "--config", "A", "--batch-size", "2", "--global-batch", "2")
    assert "iter_size" not in quiet.output


MULTISTEP = """net: "train_val.prototxt"
max_iter: 6
display: 1
test_interval: 1
test_iter: 1
snapshot: 0
snapshot_prefix: "p"
random_seed: 1
base_lr: 0.05
momentum: 0.9
lr_policy: "multistep"
gamma: 0.1
stepvalue: 1
stepvalue: 2
"""


def test_plateau_schedule_replaces_the_solvers_steps(solver_workdir, caplog, monkeypatch):
    """Sect. 3.1's schedule is plateau-only: with --plateau-patience the multistep drops at 1 and 2 are not
    applied on top (before the fix the lr at iteration 2 was 0.05 / 100 without any plateau drop)."""
    from vggproto.train.updates import Plateau
    solver_workdir()
    caplog.set_level(logging.INFO, logger="vggproto")
    Path("s.prototxt").write_text(MULTISTEP)
    scores = iter([0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7])
    original = Plateau.observe
    monkeypatch.setattr(Plateau, "observe", lambda self, value: original(self, next(scores)))
    opts = TrainOptions(weights=("init.caffemodel",), plateau_patience=2, plateau_max_drops=3,
                        plateau_output="accuracy", progress=False)
    Solver("s.prototxt", opts).solve()
    rates = {int(m.group(1)): float(m.group(2)) for m in
             (re.match(r"Iteration (\d+), lr = (\S+)", r.getMessage()) for r in caplog.records) if m}
    assert rates[0] == rates[1] == rates[2] == rates[3] == pytest.approx(0.05)
    assert rates[4] == pytest.approx(0.005)
    assert any("Learning Rate Policy: plateau" in m for m in caplog.messages)


def test_train_checks_the_snapshot_folder_before_building_nets(solver_workdir, caplog):
    """Caffe's Solver::Init checks the snapshot prefix before InitTrainNet: the net here cannot even be built
    (its data file is missing), yet the error is the snapshot folder's."""
    solver_workdir()
    Path("s.prototxt").write_text(MULTISTEP.replace('"p"', '"snapshots/p"').replace("snapshot: 0", "snapshot: 2")
                                  .replace("train_val.prototxt", "missing_net.prototxt"))
    with pytest.raises(SolverError, match="snapshot_prefix 'snapshots/p'.*directory exists"):
        Solver("s.prototxt", TrainOptions(progress=False))


def test_readme_states_the_init_the_nets_use():
    """The paper: "zero mean and 10^-2 variance"; the generated fillers use std 0.01 and the README must say so
    (it wrote N(0, 10⁻²), which reads as the paper's variance, not the files' std)."""
    from vggproto.vgg.generate import build_net
    readme = (ROOT / "README.md").read_text()
    conv = next(layer for layer in build_net("A", "train_val").layer if layer.type == "Convolution")
    assert conv.convolution_param.weight_filler.std == pytest.approx(0.01)
    assert "N(0, 10⁻²)" not in readme
    assert "σ = 0.01" in readme and "10⁻² variance" in readme


def test_chain_on_other_images_with_its_own_length_and_seed(tmp_path):
    """What `vggproto reproduce` asks of the generator: the chain's stages at mapped scales (28-pixel crops:
    S=384 -> 48, [256;512] -> [32;64]), their own max_iter, another seed; bad scales are one line."""
    from vggproto.caffe.prototxt import read_net
    _generate(tmp_path, "--config", "C", "--crop-size", "28", "--scale", "32", "--chain-scales", "48,32-64",
              "--max-iter", "6", "--chain-max-iter", "2", "--random-seed", "3", "--global-batch", "256")
    first = read_solver(tmp_path / "solvers" / "C.prototxt", resolve_prefix=False)
    multi = read_solver(tmp_path / "solvers" / "C_S256-512.prototxt", resolve_prefix=False)
    assert (first.max_iter, multi.max_iter, first.random_seed, multi.random_seed) == (6, 2, 3, 3)
    assert list(multi.weights) == ["snapshots/C_S384_iter_2.caffemodel"]
    aug = read_net(tmp_path / "nets" / "C_S256-512_train_val.prototxt").layer[0].transform_param
    assert (aug.vgg_augmentation_param.scale_min, aug.vgg_augmentation_param.scale_max) == (32, 64)
    bad = CliRunner().invoke(main, ["generate", "--config", "C", "--out-dir", str(tmp_path), "--chain-scales", "48"])
    assert bad.exit_code == 1 and "--chain-scales takes two scales" in bad.output
    worse = CliRunner().invoke(main, ["generate", "--config", "C", "--out-dir", str(tmp_path), "--scale", "3x"])
    assert worse.exit_code == 2 and "--scale: scale must be S or SMIN-SMAX" in worse.output
