"""Generate the VGG nets and solvers of the paper (Table 1, Sect. 3.1-3.2) as Caffe prototxt files.

Public API::

    generate(config, out_dir=".", **options) -> list[Path]     # what `vggproto generate` writes
    build_net(config, kind, **options) -> NetParameter          # kind: train_val | deploy | dense
    build_solver(config, stage=None, **options) -> SolverParameter
    count_params(net) -> int

``options`` are the fields of :class:`vggproto.vgg.nets.NetOptions` plus ``global_batch`` (256: the solver's
``iter_size`` makes it up when ``batch_size`` is smaller) and ``chain`` (emit the paper's S=384 and S∈[256;512]
stages; default: for C, D, E at the default scale, the configurations the paper trained at all three scales).
Files are deterministic: the committed ``nets/`` and ``solvers/`` are exactly what ``vggproto generate --config
all`` writes.  Paths inside solvers are relative to the directory you run from, as in Caffe (which resolves
``net:`` against the working directory), so run ``vggproto train solvers/D.prototxt`` from the output directory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vggproto.caffe.files import atomic_write_bytes, check_output
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import message_to_text
from vggproto.caffe.shapes import count_params, infer_shapes  # noqa: F401 (re-export)
from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import CHAIN_CONFIGS, CONFIGS, DENSE_LAYER_NAMES, PAPER_INIT_LAYERS, parse_scale  # noqa: F401 (re-export)
from vggproto.vgg.nets import KINDS, LOC_LAYER, NetOptions, build_commented

VAL_IMAGES = 50_000        # ILSVRC-2012 validation set
GLOBAL_BATCH = 256         # Sect. 3.1: "the batch size was set to 256"
ITERS_PER_EPOCH = 5_000    # 1.28M training images / 256, rounded


@dataclass(frozen=True)
class Stage:
    """One stage of the paper's training chain (Sect. 3.1) and the solver schedule we chose for it."""
    suffix: str                  # file name suffix: "", "_S384", "_S256-512"
    scale: str                   # training scale S
    base_lr: float
    stepvalue: tuple[int, ...]   # lr divided by 10 at each
    max_iter: int
    init_from: str | None        # scale of the stage whose final snapshot initialises this one


# The paper decreased lr by 10 on validation plateaus, 3 times, and stopped after 370K iterations (74 epochs);
# we fix the decreases at epochs 20, 40, 60.  S=384 starts from S=256 at lr 1e-3 (Sect. 3.1); the multi-scale
# model is fine-tuned from S=384; the paper gives no schedule for either, so both run 30 epochs, lr/10 at 10, 20.
STAGES: dict[str, Stage] = {
    "256": Stage("", "256", 0.01, (100_000, 200_000, 300_000), 370_000, None),
    "384": Stage("_S384", "384", 0.001, (50_000, 100_000), 150_000, "256"),
    "256-512": Stage("_S256-512", "256-512", 0.001, (50_000, 100_000), 150_000, "384"),
}

#: Run-length overrides for small runs (None: the paper's recipe), applied to every solver written.
RUN_LENGTH = ("max_iter", "test_iter", "test_interval", "snapshot", "random_seed")
_GENERATE_DEFAULTS: dict[str, Any] = {"global_batch": GLOBAL_BATCH, "chain": None, "chain_scales": None,
                                      "chain_max_iter": None,
                                      **{name: None for name in RUN_LENGTH}}


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------

def _split_options(options: dict[str, Any]) -> tuple[NetOptions, dict[str, Any]]:
    """Separate NetOptions fields from generate-only ones; reject unknown names."""
    net_fields = {f.name for f in dataclasses.fields(NetOptions)}
    unknown = set(options) - net_fields - set(_GENERATE_DEFAULTS)
    if unknown:
        raise VGGProtoError(f"unknown generator option(s) {', '.join(sorted(unknown))}; supported: "
                            f"{', '.join(sorted(net_fields | set(_GENERATE_DEFAULTS)))}")
    net_opts = {k: v for k, v in options.items() if k in net_fields}
    if "mean_value" in net_opts:
        net_opts["mean_value"] = tuple(float(v) for v in net_opts["mean_value"])
    if "scale" in net_opts:
        net_opts["scale"] = str(net_opts["scale"])
    extra = {**_GENERATE_DEFAULTS, **{k: v for k, v in options.items() if k in _GENERATE_DEFAULTS}}
    return NetOptions(**net_opts), extra


def _iter_size(opts: NetOptions, global_batch: int) -> int:
    if global_batch < 1 or global_batch % opts.batch_size:
        raise VGGProtoError(f"--batch-size {opts.batch_size} must divide --global-batch {global_batch} "
                            f"(the solver's iter_size accumulates {global_batch} images per update)")
    return global_batch // opts.batch_size


# --------------------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------------------

def build_net(config: str, kind: str, **options: Any) -> caffe_pb2.NetParameter:
    """The ``kind`` (train_val, deploy, dense) net of Table 1's column ``config``."""
    opts, _ = _split_options(options)
    return build_commented(config, kind, opts)[0]


def build_solver(config: str, stage: str | None = None, **options: Any) -> caffe_pb2.SolverParameter:
    """The SGD solver (BVLC fields only) for ``config``.

    ``stage`` None: training from scratch at ``options['scale']`` (the paper's recipe, Sect. 3.1); ``"384"`` or
    ``"256-512"``: that stage of the paper's chain, initialised (``weights:``) from the previous stage's snapshot.
    """
    if config not in CONFIGS:
        raise VGGProtoError(f"unknown config '{config}'; supported: {', '.join(CONFIGS)}")
    opts, extra = _split_options(options)
    opts.validate()
    if opts.localization:
        return _localization_solver(config, opts, extra)
    plan = STAGES["256"] if stage is None else STAGES.get(stage)
    if plan is None or plan.init_from is None and stage is not None:
        raise VGGProtoError(f"unknown chain stage '{stage}'; supported: 384, 256-512")
    suffix = "" if stage is None else plan.suffix
    solver = caffe_pb2.SolverParameter(
        net=f"nets/{config}{suffix}_train_val.prototxt",
        test_iter=[math.ceil(VAL_IMAGES / opts.test_batch_size)], test_interval=ITERS_PER_EPOCH,
        test_initialization=False, base_lr=plan.base_lr, display=20, max_iter=plan.max_iter,
        lr_policy="multistep", gamma=0.1, momentum=0.9, weight_decay=0.0005, stepvalue=plan.stepvalue,
        snapshot=10_000, snapshot_prefix=f"snapshots/{config}{suffix}", random_seed=1, type="SGD")
    iter_size = _iter_size(opts, extra["global_batch"])
    if iter_size > 1:
        solver.iter_size = iter_size
    if stage is not None:
        solver.weights.append(final_snapshot(config, STAGES[plan.init_from], extra))
    return _run_length(solver, stage_length(plan, extra))


def stage_length(stage: Stage, extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` with the stage's ``max_iter``: ``--chain-max-iter`` for the chain's later stages, if given."""
    if stage.init_from is None or extra["chain_max_iter"] is None:
        return extra
    return {**extra, "max_iter": extra["chain_max_iter"]}


def final_snapshot(config: str, stage: Stage, extra: dict[str, Any]) -> str:
    """The caffemodel the stage's solver leaves at its end: ``max_iter`` as generated (``--max-iter``), not the
    paper's, so a chained solver (``weights:``) names the file the previous stage of this run wrote."""
    length = stage_length(stage, extra)["max_iter"]
    last = stage.max_iter if length is None else int(length)
    return f"snapshots/{config}{stage.suffix}_iter_{last}.caffemodel"


def loc_stem(config: str, opts: NetOptions) -> str:
    """File stem of a localisation net: ``D_loc_scr``, ``D_loc_pcr``, with ``_fc`` for ``--finetune fc``."""
    return f"{config}_loc_{opts.regression}" + ("_fc" if opts.finetune == "fc" else "")


def _localization_solver(config: str, opts: NetOptions, extra: dict[str, Any]) -> caffe_pb2.SolverParameter:
    """Appendix A: lr 1e-3, initialised from the classification model trained at the same scale (``weights:``;
    the last layer, renamed, starts from its filler).  The 30-epoch schedule is our choice (the paper gives none)."""
    stem = loc_stem(config, opts)
    plan = STAGES["384"]
    init = next(s for s in STAGES.values() if s.scale == opts.scale)
    solver = caffe_pb2.SolverParameter(
        net=f"nets/{stem}_train_val.prototxt", test_iter=[math.ceil(VAL_IMAGES / opts.test_batch_size)],
        test_interval=ITERS_PER_EPOCH, test_initialization=False, base_lr=0.001, display=20,
        max_iter=plan.max_iter, lr_policy="multistep", gamma=0.1, momentum=0.9, weight_decay=0.0005,
        stepvalue=plan.stepvalue, snapshot=10_000, snapshot_prefix=f"snapshots/{stem}", random_seed=1, type="SGD")
    iter_size = _iter_size(opts, extra["global_batch"])
    if iter_size > 1:
        solver.iter_size = iter_size
    solver.weights.append(final_snapshot(config, init, extra))
    return _run_length(solver, extra)


def _run_length(solver: caffe_pb2.SolverParameter, extra: dict[str, Any]) -> caffe_pb2.SolverParameter:
    """``--max-iter`` (the lr steps keep their place in the schedule: scaled by the same factor),
    ``--test-iter``, ``--test-interval``, ``--snapshot``, ``--random-seed``: a short run (or another seed)
    without editing a generated solver."""
    for name in (*RUN_LENGTH, "chain_max_iter"):
        value = extra[name]
        if value is not None and int(value) < 0:
            raise VGGProtoError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if extra["max_iter"] is not None:
        factor = int(extra["max_iter"]) / solver.max_iter
        steps = [max(1, round(v * factor)) for v in solver.stepvalue]
        del solver.stepvalue[:]
        solver.stepvalue.extend(sorted(set(steps)))
        solver.max_iter = int(extra["max_iter"])
    if extra["test_iter"] is not None:
        del solver.test_iter[:]
        solver.test_iter.append(int(extra["test_iter"]))
    for name in ("test_interval", "snapshot", "random_seed"):
        if extra[name] is not None:
            setattr(solver, name, int(extra[name]))
    return solver


# --------------------------------------------------------------------------------------------------------------
# Text with comments
# --------------------------------------------------------------------------------------------------------------

def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())


def net_text(net: caffe_pb2.NetParameter, comments: list[str], header: str) -> str:
    """``message_to_text(net)`` with a header comment and each layer's comment printed above it."""
    head = caffe_pb2.NetParameter()
    head.CopyFrom(net)
    del head.layer[:]
    parts = [_comment(header), message_to_text(head)]
    for layer, comment in zip(net.layer, comments):
        parts.append(_comment(comment))
        parts.append("layer {\n" + textwrap.indent(message_to_text(layer), "  ") + "}\n")
    return "".join(parts)


def command_line(config: str, options: dict[str, Any]) -> str:
    """The ``vggproto generate`` command that reproduces a file (defaults omitted)."""
    defaults = {**{f.name: f.default for f in dataclasses.fields(NetOptions)}, **_GENERATE_DEFAULTS}
    words = ["vggproto generate", f"--config {config}"]
    for name in sorted(options):
        value = options[name]
        if name == "chain":
            if value is not None:
                words.append("--chain" if value else "--no-chain")
            continue
        if name == "mean_value":
            value = tuple(float(v) for v in value)
            if value == defaults[name]:
                continue
            value = ",".join(f"{v:g}" for v in value)
        elif isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value)
        elif str(value) == str(defaults[name]):
            continue
        words.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(words)


_KIND_TEXT = {
    "train_val": "training/validation net (TRAIN and TEST phases, Sect. 3.1)",
    "deploy": "deploy net (the official release's layout: Input 10x3x224x224 ... Softmax prob)",
    "dense": ("dense test net (Sect. 3.2): FC layers as convolutions, fc6 -> fc6-conv, fc7 -> fc7-conv,\n"
              "fc8 -> fc8-conv. The input shape is nominal: any H, W >= 193 works (reshape the input); the\n"
              "score map is ceil(H/32) - 6 by ceil(W/32) - 6, e.g. 1x1 at 224, 2x2 at 256, 6x6 at 384;\n"
              "average it over space (Caffe rounds pooling up: src/caffe/layers/pooling_layer.cpp)."),
}


_LOC_KIND_TEXT = {
    "train_val": "localisation training/validation net (Appendix A): the last FC layer predicts a box, Euclidean loss",
    "deploy": "localisation deploy net (Appendix A): fc8-loc outputs boxes (cx, cy, w, h) relative to the crop",
    "dense": ("dense localisation net (Appendix A, Sect. 3.2): FC layers as convolutions; each position of\n"
              "fc8-loc-conv is the box of one crop-sized window (stride 32), relative to that window."),
}


def _header(config: str, what: str, options: dict[str, Any]) -> str:
    return (f"VGG configuration {config} (Simonyan & Zisserman 2015, Table 1).\n"
            f"Generated by `{command_line(config, options)}`; regenerate rather than edit.\n{what}")


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------

def _wants_chain(config: str, opts: NetOptions, extra: dict[str, Any]) -> bool:
    if extra["chain"] is None:
        return config in CHAIN_CONFIGS and (opts.scale == "256" or extra["chain_scales"] is not None)
    return bool(extra["chain"])


def generate_texts(config: str, **options: Any) -> dict[str, str]:
    """Relative file path -> content, for everything ``generate`` writes for one configuration."""
    opts, extra = _split_options(options)
    if opts.localization:
        return _localization_texts(config, opts, options)
    files: dict[str, str] = {}
    for kind in KINDS:
        net, comments = build_commented(config, kind, opts)
        files[f"nets/{config}_{kind}.prototxt"] = net_text(net, comments, _header(config, _KIND_TEXT[kind], options))
    solver = build_solver(config, **options)
    files[f"solvers/{config}.prototxt"] = _solver_text(config, None, solver, options)
    if _wants_chain(config, opts, extra):
        for stage, scale in zip(("384", "256-512"), chain_scales(extra)):
            plan = STAGES[stage]
            staged = {**options, "scale": scale}
            net, comments = build_commented(config, "train_val", dataclasses.replace(opts, scale=scale))
            what = f"training/validation net for the S={plan.scale} stage of the paper's chain (Sect. 3.1)"
            if scale != plan.scale:
                what += f", at S={scale} (--chain-scales)"
            files[f"nets/{config}{plan.suffix}_train_val.prototxt"] = net_text(net, comments,
                                                                               _header(config, what, options))
            files[f"solvers/{config}{plan.suffix}.prototxt"] = _solver_text(
                config, stage, build_solver(config, stage, **staged), options)
    return files


def chain_scales(extra: dict[str, Any]) -> tuple[str, str]:
    """The training scales of the chain's two later stages: the paper's 384 and 256-512, or ``--chain-scales``
    (the same stages on smaller images: e.g. 48 and 32-64 for 28-pixel crops); the file names keep the paper's."""
    if extra["chain_scales"] is None:
        return STAGES["384"].scale, STAGES["256-512"].scale
    scales = tuple(str(v) for v in extra["chain_scales"])
    if len(scales) != 2:
        raise VGGProtoError(f"--chain-scales takes two scales (the S=384 stage's and the jittered one's, e.g. "
                            f"48,32-64), got {','.join(scales)}")
    for scale in scales:
        try:
            parse_scale(scale)
        except ValueError as exc:
            raise VGGProtoError(f"--chain-scales: {exc}") from None
    return scales[0], scales[1]


def _localization_texts(config: str, opts: NetOptions, options: dict[str, Any]) -> dict[str, str]:
    stem, files = loc_stem(config, opts), {}
    for kind in KINDS:
        net, comments = build_commented(config, kind, opts)
        files[f"nets/{stem}_{kind}.prototxt"] = net_text(net, comments,
                                                         _header(config, _LOC_KIND_TEXT[kind], options))
    solver = build_solver(config, **options)
    layers = "all layers" if opts.finetune == "all" else "the FC layers only (lr_mult 0 on the conv layers)"
    what = (f"SGD solver for the {opts.regression.upper()} localisation net (Appendix A): lr 1e-3, fine-tunes "
            f"{layers};\ninitialised from the S={opts.scale} classification model (weights:), "
            f"{LOC_LAYER} from scratch; the\n30-epoch schedule is our choice (the paper gives none).")
    if solver.iter_size > 1:
        what += f"\niter_size {solver.iter_size} accumulates gradients to a global batch of " \
                f"{solver.iter_size * opts.batch_size}."
    files[f"solvers/{stem}.prototxt"] = _comment(_header(config, what, options)) + message_to_text(solver)
    return files


def _solver_text(config: str, stage: str | None, solver: caffe_pb2.SolverParameter, options: dict) -> str:
    if stage is None:
        what = ("SGD solver, training from scratch (Sect. 3.1): batch 256, momentum 0.9, weight decay 5e-4,\n"
                "lr 1e-2 divided by 10 three times, 370K iterations. The paper divided on validation plateaus;\n"
                "the fixed steps at epochs 20/40/60 are our choice; `vggproto train --plateau-patience N` replaces\n"
                "them by the paper's rule (lr / 10 after N tests without a better accuracy, three times, no steps).\n"
                f"Deeper nets were initialised from net A's layers {', '.join(PAPER_INIT_LAYERS)}.")
    else:
        plan = STAGES[stage]
        what = (f"SGD solver for the S={plan.scale} stage of the paper's chain (Sect. 3.1), initialised from the "
                f"S={STAGES[plan.init_from].scale}\nstage's final snapshot (weights:); lr 1e-3; the 30-epoch "
                f"schedule is our choice (the paper gives none).")
    if solver.iter_size > 1:
        batch = solver.iter_size * int(options.get("batch_size", 1))
        what += f"\niter_size {solver.iter_size} accumulates gradients to a global batch of {batch}."
    return _comment(_header(config, what, options)) + message_to_text(solver)


def generate(config: str, out_dir: str | os.PathLike = ".", *, force: bool = False, **options: Any) -> list[Path]:
    """Write the nets and solvers of ``config`` (or ``"all"``) under ``out_dir``; return the paths written
    (existing prototxt files are regenerated; a file of another kind is replaced only with ``force``)."""
    configs: Iterable[str] = CONFIGS if config == "all" else (config,)
    if config != "all" and config not in CONFIGS:
        raise VGGProtoError(f"unknown config '{config}'; supported: {', '.join(CONFIGS)}, all")
    planned = [(Path(out_dir) / relative, text) for name in configs
               for relative, text in generate_texts(name, **options).items()]
    for path, _ in planned:  # every output is checked before the first is written: all or nothing is refused
        if path.parent.is_dir():
            check_output(path, kind="text", force=force)
    written: list[Path] = []
    for path, text in planned:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode("utf-8"))
        written.append(path)
    return written
