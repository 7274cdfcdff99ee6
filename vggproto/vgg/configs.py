"""Table 1 of Simonyan & Zisserman (2015) as data, in the paper's own notation.

Everything the generator emits is derived from :data:`TABLE1` by one loop (:mod:`vggproto.vgg.generate`); there is
no per-configuration builder.  A new column (or a localisation head, issue #11) is a new entry here, not new code.
Tokens: ``"conv<k>-<n>"`` (k×k convolution, n channels, stride 1, pad (k-1)/2, ReLU after), ``"LRN"``
(local response normalisation, Krizhevsky et al. 2012), ``"maxpool"`` (2×2, stride 2), ``"FC-<n>"`` (fully
connected, n outputs, ReLU after all but the last), ``"soft-max"``.  The last FC's width is the number of classes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TRUNK = ("maxpool", "FC-4096", "FC-4096", "FC-1000", "soft-max")

# Table 1, one tuple per column, read top to bottom.
TABLE1: dict[str, tuple[str, ...]] = {
    "A": ("conv3-64", "maxpool",
          "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512") + _TRUNK,
    "A-LRN": ("conv3-64", "LRN", "maxpool",
              "conv3-128", "maxpool",
              "conv3-256", "conv3-256", "maxpool",
              "conv3-512", "conv3-512", "maxpool",
              "conv3-512", "conv3-512") + _TRUNK,
    "B": ("conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512") + _TRUNK,
    "C": ("conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv1-256", "maxpool",
          "conv3-512", "conv3-512", "conv1-512", "maxpool",
          "conv3-512", "conv3-512", "conv1-512") + _TRUNK,
    "D": ("conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512") + _TRUNK,
    "E": ("conv3-64", "conv3-64", "maxpool",
          "conv3-128", "conv3-128", "maxpool",
          "conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool",
          "conv3-512", "conv3-512", "conv3-512", "conv3-512") + _TRUNK,
}

CONFIGS: tuple[str, ...] = tuple(TABLE1)

# Table 2 of the paper (millions); the exact counts for 1000 classes are checked by the tests.
PARAM_COUNTS: dict[str, int] = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
                                "D": 138_357_544, "E": 143_667_240}

# Sect. 3.1: deeper nets were initialised from net A's first four conv layers and its three FC layers.
PAPER_INIT_LAYERS: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")

# Sect. 3.2: the FC layers of the dense (fully-convolutional) test net, and their names there.
DENSE_LAYER_NAMES: dict[str, str] = {"fc6": "fc6-conv", "fc7": "fc7-conv", "fc8": "fc8-conv"}

# Official release (gist readme): BGR mean pixel subtracted from 0-255 images.
MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)

# Krizhevsky et al. (2012) LRN constants: n=5, alpha=1e-4, beta=0.75, k=2 with alpha multiplying the plain sum.
# Caffe divides alpha by n (src/caffe/layers/lrn_layer.cpp), so the same normalisation is alpha = 5 * 1e-4.
LRN_LOCAL_SIZE = 5
LRN_ALPHA_CAFFE = 0.0005
LRN_BETA = 0.75
LRN_K = 2.0

# Training scales S of Sect. 3.1 (fixed 256, fixed 384, jittered [256; 512]) and the paper's training chain:
# S=384 initialised from S=256 (lr 1e-3), [256;512] fine-tuned from S=384.  Only C, D, E were trained at all
# three scales (Table 3); A, A-LRN and B only at S=256.
SCALES: tuple[str, ...] = ("256", "384", "256-512", "none")
NO_RESCALE = "none"  # plain Caffe transform (crop, mirror, mean): images already at the net's input size
SCALE_CHAIN: tuple[str, ...] = ("256", "384", "256-512")
CHAIN_CONFIGS: tuple[str, ...] = ("C", "D", "E")


@dataclass(frozen=True)
class Token:
    """One parsed Table 1 entry: ``kind`` in conv/lrn/pool/fc/softmax, with kernel and width where they apply."""
    kind: str
    kernel: int = 0
    width: int = 0


_CONV = re.compile(r"conv(\d+)-(\d+)$")
_FC = re.compile(r"FC-(\d+)$")
_FIXED = {"LRN": Token("lrn"), "maxpool": Token("pool", kernel=2), "soft-max": Token("softmax")}


def parse_token(text: str) -> Token:
    """Parse one entry of Table 1 (``"conv3-64"``, ``"LRN"``, ``"maxpool"``, ``"FC-4096"``, ``"soft-max"``)."""
    if text in _FIXED:
        return _FIXED[text]
    conv = _CONV.match(text)
    if conv:
        return Token("conv", kernel=int(conv.group(1)), width=int(conv.group(2)))
    fc = _FC.match(text)
    if fc:
        return Token("fc", width=int(fc.group(1)))
    raise ValueError(f"not a Table 1 entry: {text!r}")


def parse_scale(scale: str | int) -> tuple[int, int]:
    """``"256"`` -> (256, 256); ``"256-512"`` -> (256, 512); ``"none"`` -> (0, 0): no rescaling."""
    if str(scale) == NO_RESCALE:
        return 0, 0
    parts = str(scale).split("-")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"scale must be S or SMIN-SMAX (e.g. 256, 384, 256-512), got {scale!r}")
    low, high = int(parts[0]), int(parts[-1])
    if high < low:
        raise ValueError(f"scale range {scale!r} is decreasing")
    return low, high


def test_scale_for(scale: str | int) -> int:
    """Sect. 4.1: Q = S for a fixed S, Q = (S_min + S_max) / 2 for a jittered S."""
    low, high = parse_scale(scale)
    return (low + high) // 2
