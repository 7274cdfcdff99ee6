"""``TrainOptions``: what ``caffe train``'s flags (and vggproto's extensions) add to a solver file, every field
named, so a misspelt option is a ``TypeError`` at the call.  The typed seam between the command line, the launcher
(:mod:`vggproto.train.distributed`) and the :class:`~vggproto.train.solver.Solver`."""
from __future__ import annotations

from dataclasses import dataclass

from vggproto.train.signals import SignalEffect


@dataclass
class TrainOptions:
    """What ``caffe train``'s flags add to the solver file (plus vggproto's extensions)."""

    weights: tuple[str, ...] = ()          # --weights (finetune), applied in order
    level: int | None = None               # --level  → train_state.level
    stages: tuple[str, ...] = ()           # --stage  → train_state.stage
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    per_gpu_batch: bool = False            # BVLC semantics: the prototxt batch is per process
    sigint_effect: SignalEffect = "stop"   # Caffe's defaults (tools/caffe.cpp)
    sighup_effect: SignalEffect = "snapshot"
    plateau_patience: int = 0
    plateau_max_drops: int = 0
    plateau_output: str | None = None      # default: the first Accuracy top of test net #0
    init_layers: tuple[str, ...] | None = None  # restrict --weights copying to these layers
    progress: bool | None = None           # tqdm bar (None: when stderr is a TTY)
    csv: bool = True
    glog: bool = False                     # give worker processes glog's line prefix (the CLI's format)
    fault: str = ""                        # tests only: "kill:RANK:ITER" makes that rank SIGKILL itself
    relay_signals: bool = False            # a launcher's worker: SIGINT/SIGHUP arrive relayed (train.signals)
    timeout_s: float | None = None         # collective timeout (default: VGGPROTO_COLLECTIVE_TIMEOUT_S or 1800)
    bucket_mb: float | None = None         # gradient all-reduce bucket (default: VGGPROTO_BUCKET_MB or 25)
    channels_last: bool = False            # 4-D weights (so conv/pool activations) in NHWC memory: same values
