"""Official Caffe VGG weights <-> ``torchvision.models.vgg11/13/16/19`` state dicts, functionally equivalent.

The two releases disagree on the input, not on the network: Caffe's VGG expects BGR pixels in 0-255 minus the
mean pixel (B, G, R) = (103.939, 116.779, 123.68); torchvision expects RGB in [0, 1] normalised with
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).  Both input maps are affine per channel, so the
difference folds exactly into conv1_1: with ``x_caffe[b] = 255 * (std[r] * x_tv[r] + mean[r]) - M[b]``
(``r = 2 - b`` swaps BGR and RGB)::

    W_tv[:, r] = 255 * std[r] * W_caffe[:, 2 - r]
    b_tv       = b_caffe + sum_{b, kh, kw} W_caffe[:, b, kh, kw] * (255 * mean[2 - b] - M[b])

and the reverse divides it back out.  The fold is exact wherever conv1_1's 3x3 window lies inside the image.  On
the one-pixel border the zero padding differs: torchvision pads with 0 in normalised space, which is
``255 * mean - M`` = (-0.41, -0.50, -0.005) in Caffe's BGR space instead of Caffe's 0 (see
docs/notes/convert.md for the measured effect on the logits).  Everything after conv1_1 is the same function:
ReLU, 2x2/2 max pooling on even sizes (Caffe's ceil rule and torchvision's floor agree), fc6 on the C-order
flatten of pool5 (512x7x7), which is torchvision's ``flatten`` of ``AdaptiveAvgPool2d((7, 7))`` — an identity
at 224x224 input.

The folding is computed in float64 and rounded once to float32.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

import numpy as np

from vggproto.errors import WeightsError
from vggproto.vgg.configs import MEAN_BGR
from vggproto.weights.fit import Weights

#: Caffe VGG input convention: BGR mean pixel subtracted from 0-255 values (reference D) — the generator's value.
CAFFE_MEAN_BGR = MEAN_BGR
#: torchvision ImageNet normalisation, RGB, applied to [0, 1] values.
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)

_CONV_NAME = re.compile(r"^conv(\d+)_(\d+)$")
_FC_NAMES = ("fc6", "fc7", "fc8")
_TV_KEY = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias)$")
#: torchvision's classifier indices: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear.
_CLASSIFIER_INDEX = {"fc6": 0, "fc7": 3, "fc8": 6}


def is_torchvision_state_dict(keys: Iterable[str]) -> bool:
    """True when every key looks like torchvision VGG's ``features.N.weight`` / ``classifier.N.bias``."""
    keys = list(keys)
    return bool(keys) and all(_TV_KEY.match(k) for k in keys) and any(k.startswith("features.") for k in keys)


def caffe_layer_order(weights: Mapping[str, list[np.ndarray]]) -> list[str]:
    """The Caffe VGG layers present, in network order (conv blocks by number, then fc6-fc8).

    Raises WeightsError naming what is missing or unexpected, since only the official VGG layout
    (conv<block>_<i>, fc6, fc7, fc8 — configurations A, B, D, E) has a torchvision counterpart.
    """
    convs, others = [], []
    for name in weights:
        match = _CONV_NAME.match(name)
        if match:
            convs.append((int(match.group(1)), int(match.group(2)), name))
        elif name not in _FC_NAMES:
            others.append(name)
    if others:
        raise WeightsError(f"layers {others} have no torchvision VGG counterpart; expected only conv<block>_<i> "
                           f"and fc6/fc7/fc8 (the official VGG layout)")
    missing = [n for n in _FC_NAMES if n not in weights]
    blocks = sorted({b for b, _, _ in convs})
    if missing or blocks != [1, 2, 3, 4, 5]:
        raise WeightsError(f"not the official VGG layout: need conv1_*..conv5_* and fc6, fc7, fc8; "
                           f"found conv blocks {blocks}, missing {missing}")
    for block in blocks:
        indices = sorted(i for b, i, _ in convs if b == block)
        if indices != list(range(1, len(indices) + 1)):
            raise WeightsError(f"conv block {block} has layers conv{block}_{indices}; expected consecutive numbering")
    return [name for _, _, name in sorted(convs)] + list(_FC_NAMES)


def _torchvision_names(order: list[str]) -> dict[str, str]:
    """Caffe layer name -> torchvision module prefix (``features.N`` or ``classifier.N``)."""
    names, index, block = {}, 0, 1
    for name in order:
        if name in _CLASSIFIER_INDEX:
            names[name] = f"classifier.{_CLASSIFIER_INDEX[name]}"
            continue
        this_block = int(_CONV_NAME.match(name).group(1))
        if this_block != block:  # a MaxPool2d module sits between blocks
            index, block = index + 1, this_block
        names[name] = f"features.{index}"
        index += 2  # Conv2d, then ReLU
    return names


def _canonical(name: str, blobs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias with legacy 4-D dims dropped (Caffe's right-aligned rule): fc 1x1xNxK -> NxK, 1x1x1xN -> N."""
    if len(blobs) != 2:
        raise WeightsError(f"layer '{name}' has {len(blobs)} blobs; expected weight and bias")
    weight, bias = blobs
    if name in _CLASSIFIER_INDEX and weight.ndim == 4:
        if weight.shape[:2] != (1, 1):
            raise WeightsError(f"layer '{name}' weight has shape {list(weight.shape)}; expected NxK or 1x1xNxK "
                               f"(use --conv-to-fc for the fully-convolutional net's weights)")
        weight = weight.reshape(weight.shape[2:])
    if bias.ndim != 1:
        if any(d != 1 for d in bias.shape[:-1]):
            raise WeightsError(f"layer '{name}' bias has shape {list(bias.shape)}; expected N or 1x1x1xN")
        bias = bias.reshape(bias.shape[-1])
    expected_ndim = 2 if name in _CLASSIFIER_INDEX else 4
    if weight.ndim != expected_ndim or weight.shape[0] != bias.shape[0]:
        raise WeightsError(f"layer '{name}' has weight {list(weight.shape)} and bias {list(bias.shape)}; "
                           f"expected a {expected_ndim}-D weight with one bias per output")
    return weight, bias


def _input_shift() -> np.ndarray:
    """Per Caffe (BGR) input channel: the Caffe-space value of torchvision's zero, ``255 * mean[r] - M[b]``."""
    mean_bgr = np.array(TORCHVISION_MEAN_RGB[::-1], dtype=np.float64)
    return 255.0 * mean_bgr - np.array(CAFFE_MEAN_BGR, dtype=np.float64)


def fold_caffe_to_torchvision_input(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv1_1 for BGR, 0-255, mean-pixel input -> conv1_1 for RGB, [0, 1], mean/std-normalised input."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"conv1_1 weight has shape {list(weight.shape)}; expected Ox3xKxK (3 input colours)")
    w64 = weight.astype(np.float64)
    std_bgr = np.array(TORCHVISION_STD_RGB[::-1], dtype=np.float64)
    shifted_bias = bias.astype(np.float64) + np.einsum("obhw,b->o", w64, _input_shift())
    new_weight = (w64 * (255.0 * std_bgr)[None, :, None, None])[:, ::-1]  # BGR -> RGB input channels
    return np.ascontiguousarray(new_weight, dtype=np.float32), shifted_bias.astype(np.float32)


def fold_torchvision_to_caffe_input(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`fold_caffe_to_torchvision_input`."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"features.0.weight has shape {list(weight.shape)}; expected Ox3xKxK (3 input colours)")
    std_bgr = np.array(TORCHVISION_STD_RGB[::-1], dtype=np.float64)
    w_bgr = weight.astype(np.float64)[:, ::-1] / (255.0 * std_bgr)[None, :, None, None]
    new_bias = bias.astype(np.float64) - np.einsum("obhw,b->o", w_bgr, _input_shift())
    return np.ascontiguousarray(w_bgr, dtype=np.float32), new_bias.astype(np.float32)


def _naming(source: str | os.PathLike | None, exc: WeightsError) -> WeightsError:
    """``exc`` with the file the weights came from in front (a layout refused must say whose layout it is)."""
    return WeightsError(f"{os.fspath(source)}: {exc}") if source is not None else exc


def caffe_to_torchvision(weights: Mapping[str, list[np.ndarray]],
                         source: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Official-layout Caffe VGG weights -> a ``torchvision.models.vggNN`` state dict (numpy arrays); a refusal
    names ``source``, the file the weights were read from.

    Arrays other than conv1_1's are passed through without copying (legacy shapes are reshaped views).
    """
    try:
        return _caffe_to_torchvision(weights)
    except WeightsError as exc:
        raise _naming(source, exc) from None


def _caffe_to_torchvision(weights: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    order = caffe_layer_order(weights)
    names = _torchvision_names(order)
    state: dict[str, np.ndarray] = {}
    for name in order:
        weight, bias = _canonical(name, weights[name])
        if name == order[0]:
            weight, bias = fold_caffe_to_torchvision_input(weight, bias)
        state[f"{names[name]}.weight"] = weight
        state[f"{names[name]}.bias"] = bias
    return state


def torchvision_to_caffe(state: Mapping[str, np.ndarray], source: str | os.PathLike | None = None) -> Weights:
    """A torchvision VGG (no batch norm) state dict -> Caffe VGG weights for BGR, 0-255, mean-pixel input; a
    refusal names ``source``, the file the state dict was read from."""
    try:
        return _torchvision_to_caffe(state)
    except WeightsError as exc:
        raise _naming(source, exc) from None


def _torchvision_to_caffe(state: Mapping[str, np.ndarray]) -> Weights:
    bad = [k for k in state if not _TV_KEY.match(k)]
    if bad:
        hint = " (batch-norm variants such as vgg16_bn are not supported)" if any("running" in k for k in bad) else ""
        raise WeightsError(f"not a torchvision VGG state dict: unexpected keys {bad[:5]}{hint}")
    conv_indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    order, block, within = [], 1, 0
    for prev, index in zip([None] + conv_indices, conv_indices):
        if prev is not None and index - prev == 3:  # ReLU then MaxPool2d between two convs: a new block
            block, within = block + 1, 0
        elif prev is not None and index - prev != 2:
            raise WeightsError(f"features.{prev} -> features.{index}: not the torchvision VGG module layout")
        within += 1
        order.append((f"conv{block}_{within}", f"features.{index}"))
    order += [(fc, f"classifier.{i}") for fc, i in _CLASSIFIER_INDEX.items()]
    weights: Weights = {}
    for name, prefix in order:
        try:
            weights[name] = [state[f"{prefix}.weight"], state[f"{prefix}.bias"]]
        except KeyError as exc:
            raise WeightsError(f"torchvision state dict lacks {exc.args[0]} (for Caffe layer {name})") from None
    caffe_layer_order(weights)  # validates the block structure
    first = order[0][0]
    weights[first] = list(fold_torchvision_to_caffe_input(*weights[first]))
    return weights
