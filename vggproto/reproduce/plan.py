"""The paper's Sect. 4 protocol as a list of steps, each one ``vggproto`` command with its inputs and outputs.

Per seed (``DIR/seed<k>``): generate each configuration's files; train A from scratch and A-LRN; B-E initialised
from A's first four conv and three FC layers (Sect. 3.1, ``--init-layers paper``), each at the first fixed S; for
C, D, E the paper's chain (S=384 from S=256, jittered S from S=384, the solvers' ``weights:``).  Then the
evaluations the tables need (:mod:`vggproto.reproduce.tables` says which row reads which).  Scales are the
paper's pixels mapped to the data by one ratio, ``crop / 224`` (:class:`ScaleMap`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import CHAIN_CONFIGS, CONFIGS

PAPER_CROP = 224                      # Sect. 3.1: 224x224 crops
PAPER_SCALES = (256, 384, 512)        # fixed S = 256 and 384; jittered S in [256; 512]
PAPER_ITERATIONS = (370_000, 150_000)  # the generator's paper lengths: from scratch, each later chain stage
TABLES = (3, 4, 5, 6)
FIXED1, FIXED2, JITTER = "fixed1", "fixed2", "jitter"
METHODS = ("dense", "crops", "dense+crops")


@dataclass(frozen=True)
class ScaleMap:
    """The paper's pixels on this data: every size times ``crop / 224`` (one ratio, printed at the start)."""

    crop: int
    paper: tuple[int, int, int] = PAPER_SCALES

    def px(self, paper_pixels: int) -> int:
        return max(1, round(paper_pixels * self.crop / PAPER_CROP))

    def train_scale(self, mode: str) -> str:
        """The generator's ``--scale`` of a training mode, mapped: ``32``, ``48``, ``32-64``."""
        low, mid, high = self.paper
        return {FIXED1: str(self.px(low)), FIXED2: str(self.px(mid)),
                JITTER: f"{self.px(low)}-{self.px(high)}"}[mode]

    def label(self, mode: str) -> str:
        """A training mode in the paper's notation: ``256``, ``384``, ``[256;512]``."""
        low, mid, high = self.paper
        return {FIXED1: str(low), FIXED2: str(mid), JITTER: f"[{low};{high}]"}[mode]

    def single_scale(self, mode: str) -> tuple[int, ...]:
        """Sect. 4.1: Q = S for a fixed S, Q = (Smin + Smax) / 2 for a jittered one (paper pixels)."""
        low, mid, high = self.paper
        return {FIXED1: (low,), FIXED2: (mid,), JITTER: ((low + high) // 2,)}[mode]

    def multi_scale(self, mode: str) -> tuple[int, ...]:
        """Sect. 4.2: {S - 32, S, S + 32} for a fixed S, {Smin, middle, Smax} for a jittered one (paper pixels)."""
        if mode == JITTER:
            low, _, high = self.paper
            return low, (low + high) // 2, high
        s = self.single_scale(mode)[0]
        return s - 32, s, s + 32

    def describe(self) -> str:
        pairs = [(PAPER_CROP, self.crop), *((p, self.px(p)) for p in self.paper)]
        return (f"scales: the paper's pixels x {self.crop}/{PAPER_CROP} = {self.crop / PAPER_CROP:.4g}: "
                + ", ".join(f"{p} -> {m}" for p, m in pairs))


@dataclass(frozen=True)
class Options:
    """Everything ``vggproto reproduce`` takes (the command's flags, paths absolute)."""

    out: str
    val_list: str
    root: str
    train_list: str | None = None
    data: tuple[str, str] | None = None     # TRAIN_DB, VAL_DB; None: converted from the lists
    tables: tuple[int, ...] = TABLES
    configs: tuple[str, ...] = CONFIGS
    width_divisor: int = 1
    crop: int = PAPER_CROP
    scales: tuple[int, int, int] = PAPER_SCALES
    seeds: int = 1
    gpus: str | None = None
    iterations: int | None = None           # max_iter from scratch; None: the paper's 370K
    chain_iterations: int | None = None     # max_iter of each later chain stage; None: as --iterations
    batch_size: int = 256
    test_batch_size: int = 50
    test_iter: int | None = None
    test_interval: int | None = None
    num_classes: int = 1000
    init: str = "gaussian"
    mean_value: tuple[float, ...] | None = None
    input_scale: float = 1.0
    plateau_patience: int = 0
    grid: int = 5
    eval_limit: int | None = None
    eval_workers: int = 2
    encoded: bool = False

    def lengths(self) -> tuple[int, int]:
        """``max_iter`` from scratch and of a later chain stage, as the generated solvers will say."""
        first = self.iterations or PAPER_ITERATIONS[0]
        later = self.chain_iterations or self.iterations or PAPER_ITERATIONS[1]
        return first, later


@dataclass(frozen=True)
class Step:
    """One command of the plan: ``vggproto ARGV`` run in ``DIR/cwd``; ``outputs`` (relative to DIR) are what it
    must leave; ``inputs`` files outside the plan it reads; ``after`` the steps whose outputs it reads."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Model:
    """One trained net: configuration, training mode, file stem (its solver and snapshot names)."""

    config: str
    mode: str
    stem: str


def models(options: Options) -> list[Model]:
    """The nets the plan trains: A (always: B-E start from it), the configurations asked for at the first fixed
    S, and C, D, E also at the second fixed S and jittered (the paper's chain, Table 3)."""
    configs = [c for c in CONFIGS if c in options.configs or (c == "A" and set(options.configs) - {"A-LRN"})]
    found = []
    for c in configs:  # Table 3's order; A first, so every net's initialisation is trained before it
        found.append(Model(c, FIXED1, c))
        if c in CHAIN_CONFIGS:
            found += [Model(c, FIXED2, f"{c}_S384"), Model(c, JITTER, f"{c}_S256-512")]
    return found


def check(options: Options) -> None:
    """One line for options the plan cannot run with."""
    unknown = [c for c in options.configs if c not in CONFIGS]
    if unknown or not options.configs:
        raise VGGProtoError(f"--configs: unknown {', '.join(unknown) or '(none)'}; supported: {', '.join(CONFIGS)}")
    if [t for t in options.tables if t not in TABLES] or not options.tables:
        raise VGGProtoError(f"--tables: supported: {', '.join(map(str, TABLES))}")
    low, mid, high = options.scales
    if not low < mid <= high or low - 32 < PAPER_CROP:
        raise VGGProtoError(f"--scales S1,S2,SMAX (the paper's pixels) must satisfy 224 <= S1 - 32, S1 < S2 <= SMAX; "
                            f"got {low},{mid},{high}")
    if options.seeds < 1 or options.crop < 1 or options.grid < 1:
        raise VGGProtoError("--seeds, --crop and --grid must be positive")
    if options.data is None and options.train_list is None:
        raise VGGProtoError("give the training data: --list TRAIN.txt,VAL.txt (converted to LMDBs by the plan) "
                            "or --data TRAIN_DB,VAL_DB")


def snapshot_of(model: Model, options: Options) -> str:
    """The caffemodel a model's training step leaves (relative to its seed folder)."""
    first, later = options.lengths()
    return f"snapshots/{model.stem}_iter_{first if model.mode == FIXED1 else later}.caffemodel"


def data_steps(options: Options) -> tuple[list[Step], tuple[str, str]]:
    """``convert-imageset`` of the two lists (the README's step 1), or nothing when ``--data`` names the LMDBs."""
    if options.data is not None:
        return [], options.data
    steps = []
    for split, listing in (("train", options.train_list), ("val", options.val_list)):
        argv = ("convert-imageset", options.root.rstrip(os.sep) + os.sep, listing, f"data/{split}_lmdb",
                *(("--shuffle",) if split == "train" else ()), *(("--encoded",) if options.encoded else ()),
                "--force")
        steps.append(Step(f"convert-{split}", argv, "", (f"data/{split}_lmdb",), inputs=(listing,)))
    out = Path(options.out)
    return steps, (str(out / "data/train_lmdb"), str(out / "data/val_lmdb"))


# ------------------------------------------------------------------------------------------------------------------
# Table rows and the evaluations they read
# ------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Eval:
    """One ``vggproto evaluate`` run per seed: a model (or two, fused), a method, test scales in paper pixels."""

    models: tuple[Model, ...]
    method: str
    scales: tuple[int, ...]

    @property
    def name(self) -> str:
        who = "+".join(m.stem for m in self.models)
        return f"{who}-{self.method.replace('+', '_')}-{'_'.join(map(str, self.scales))}"


@dataclass(frozen=True)
class Row:
    """A row of one of the paper's tables: what it shows and the evaluation it reads."""

    table: int
    evaluation: Eval

    @property
    def key(self) -> tuple[int, str, str, str]:
        """(table, configurations, training mode, method): how the paper's numbers are looked up."""
        ev = self.evaluation
        return self.table, "+".join(m.config for m in ev.models), ev.models[0].mode, ev.method


def rows(options: Options) -> list[Row]:
    """Tables 3-6 for the configurations asked for: 3 every net at one test scale; 4 B-E at three; 5 dense, multi-crop
    and both for the jittered C-E; 6 the fusion of the two best nets (the jittered D and E in the paper)."""
    scales = ScaleMap(options.crop, options.scales)
    shown = [m for m in models(options) if m.config in options.configs]
    found: list[Row] = []
    for model in shown:
        found.append(Row(3, Eval((model,), "dense", scales.single_scale(model.mode))))
    for model in shown:
        if model.config not in ("A", "A-LRN"):
            found.append(Row(4, Eval((model,), "dense", scales.multi_scale(model.mode))))
    for model in (m for m in shown if m.mode == JITTER):
        found += [Row(5, Eval((model,), method, scales.multi_scale(JITTER))) for method in METHODS]
    pair = fusion_pair(shown)
    if pair:
        found += [Row(6, Eval(pair, method, scales.multi_scale(pair[0].mode))) for method in METHODS]
    return [row for row in found if row.table in options.tables or _needed(row, options)]


def fusion_pair(shown: list[Model]) -> tuple[Model, ...]:
    """Sect. 4.4's post-submission ensemble: the two best multi-scale models, D and E.  Chosen before any
    training (the plan is fixed up front): the two deepest jittered nets, else the two deepest nets."""
    jittered = [m for m in shown if m.mode == JITTER]
    pool = jittered if len(jittered) >= 2 else [m for m in shown if m.mode == FIXED1]
    return tuple(pool[-2:]) if len(pool) >= 2 else ()


def _needed(row: Row, options: Options) -> bool:
    """A row outside ``--tables`` that a claim about the asked tables compares with (Table 4's dense row is
    Table 5's dense row; the single nets of Table 6 are Table 5's)."""
    return (row.table == 4 and 5 in options.tables and row.evaluation.models[0].mode == JITTER) or \
        (row.table == 5 and 6 in options.tables)


def evaluations(options: Options) -> list[Eval]:
    """Each evaluation once (Table 4's dense row of a jittered net is also Table 5's)."""
    unique: dict[str, Eval] = {}
    for row in rows(options):
        unique.setdefault(row.evaluation.name, row.evaluation)
    return list(unique.values())


# ------------------------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------------------------

def _generate_argv(config: str, seed: int, options: Options, sources: tuple[str, str]) -> tuple[str, ...]:
    scales = ScaleMap(options.crop, options.scales)
    first, later = options.lengths()
    argv = ["generate", "--config", config, "--out-dir", ".", "--width-divisor", str(options.width_divisor),
            "--num-classes", str(options.num_classes), "--crop-size", str(options.crop),
            "--scale", scales.train_scale(FIXED1), "--batch-size", str(options.batch_size),
            "--global-batch", str(options.batch_size), "--test-batch-size", str(options.test_batch_size),
            "--init", options.init, "--input-scale", f"{options.input_scale:g}", "--random-seed", str(seed),
            "--train-source", sources[0], "--val-source", sources[1], "--force"]
    if options.mean_value is not None:
        argv += ["--mean-value", ",".join(f"{v:g}" for v in options.mean_value)]
    if options.iterations is not None:
        argv += ["--max-iter", str(first), "--snapshot", "0"]
    for flag, value in (("--test-iter", options.test_iter), ("--test-interval", options.test_interval)):
        if value is not None:
            argv += [flag, str(value)]
    if config in CHAIN_CONFIGS:
        argv += ["--chain-scales", f"{scales.train_scale(FIXED2)},{scales.train_scale(JITTER)}",
                 "--chain-max-iter", str(later)]
    return tuple(argv)


def _generated(config: str) -> tuple[str, ...]:
    files = [f"nets/{config}_{kind}.prototxt" for kind in ("train_val", "deploy", "dense")]
    files.append(f"solvers/{config}.prototxt")
    if config in CHAIN_CONFIGS:
        for suffix in ("_S384", "_S256-512"):
            files += [f"nets/{config}{suffix}_train_val.prototxt", f"solvers/{config}{suffix}.prototxt"]
    return tuple(files)


def _train_step(model: Model, seed: int, options: Options, data: list[str]) -> Step:
    folder = f"seed{seed}"
    argv = ["train", f"solvers/{model.stem}.prototxt"]
    after = [f"{folder}-generate-{model.config}", *data]
    if model.mode == FIXED1 and model.config not in ("A", "A-LRN"):
        a = Model("A", FIXED1, "A")
        argv += ["--weights", snapshot_of(a, options), "--init-layers", "paper"]  # Sect. 3.1
        after.append(f"{folder}-train-A")
    elif model.mode != FIXED1:  # the chain: the solver's weights: names the previous stage's snapshot
        after.append(f"{folder}-train-{model.config}" + ("" if model.mode == FIXED2 else "_S384"))
    if options.gpus:
        argv += ["--gpus", options.gpus]
    if options.plateau_patience:
        argv += ["--plateau-patience", str(options.plateau_patience)]
    return Step(f"{folder}-train-{model.stem}", tuple(argv), folder, (f"{folder}/{snapshot_of(model, options)}",),
                inputs=tuple(options.data or ()), after=tuple(after))


def _eval_step(ev: Eval, seed: int, options: Options) -> Step:
    folder = f"seed{seed}"
    scales = ScaleMap(options.crop, options.scales)
    first, *others = ev.models
    argv = ["evaluate", "--model", f"nets/{first.config}_deploy.prototxt", "--weights", snapshot_of(first, options)]
    for other in others:
        argv += ["--fuse", f"nets/{other.config}_deploy.prototxt:{snapshot_of(other, options)}"]
    argv += ["--list", options.val_list, "--root", options.root, "--mode", ev.method,
             "--scales", ",".join(str(scales.px(q)) for q in ev.scales), "--grid", str(options.grid),
             "--workers", str(options.eval_workers), "--json", f"evals/{ev.name}.json", "--force",
             "--input-scale", f"{options.input_scale:g}"]
    if options.mean_value is not None:
        argv += ["--mean-value", ",".join(f"{v:g}" for v in options.mean_value)]
    if options.eval_limit:
        argv += ["--limit", str(options.eval_limit)]
    if options.gpus and not options.gpus.startswith("cpu"):
        argv += ["--gpu", options.gpus.split(",")[0].replace("all", "0")]
    after = tuple(f"{folder}-train-{m.stem}" for m in ev.models) + tuple(f"{folder}-generate-{m.config}"
                                                                           for m in ev.models)
    return Step(f"{folder}-eval-{ev.name}", tuple(argv), folder, (f"{folder}/evals/{ev.name}.json",),
                inputs=(options.val_list,), after=after)


def build_plan(options: Options) -> list[Step]:
    """Every step, in an order that runs each after the steps it reads: data, then per seed generate, train
    (A first), evaluate."""
    check(options)
    steps, sources = data_steps(options)
    data = [s.name for s in steps]
    trained = models(options)
    for seed in range(1, options.seeds + 1):
        folder = f"seed{seed}"
        for config in dict.fromkeys(m.config for m in trained):
            outputs = tuple(f"{folder}/{f}" for f in _generated(config))
            steps.append(Step(f"{folder}-generate-{config}", _generate_argv(config, seed, options, sources),
                              folder, outputs))
        steps += [_train_step(model, seed, options, data) for model in trained]
        steps += [_eval_step(ev, seed, options) for ev in evaluations(options)]
    return steps
