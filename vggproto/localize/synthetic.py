"""A small synthetic localisation set: coloured rectangles drawn on real photographs (scikit-image's embedded
images), one rectangle per image, its class given by its colour, written as PNG files plus box list files
(:mod:`vggproto.data.boxes` format).  Used by the tests and ``tools/bench_localize.py`` to check that a
localisation net learns to place boxes, on CPU, in minutes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vggproto.caffe.proto import caffe_pb2

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
          "motorcycle_left")
COLOURS_BGR = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255))   # red, green, blue, yellow


def _photos() -> list[np.ndarray]:
    """The embedded photos as HWC BGR uint8 (grey ones replicated to 3 channels)."""
    from skimage import data
    out = []
    for name in PHOTOS:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:   # an image missing from this scikit-image version, or its pooch cache
            continue
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, 2::-1]).astype(np.uint8))
    return out


def synthetic_image(photo: np.ndarray, rng: np.random.Generator, height: int, width: int,
                    classes: int) -> tuple[np.ndarray, int, np.ndarray]:
    """A random ``height`` × ``width`` window of ``photo`` with one filled rectangle: (image, class, corners)."""
    from vggproto.data.augment import resize
    side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2]) + 1))
    y = int(rng.integers(0, photo.shape[0] - side + 1))
    x = int(rng.integers(0, photo.shape[1] - side + 1))
    img = resize(photo[y:y + side, x:x + side], (height, width)).copy()
    label = int(rng.integers(classes))
    bw = int(rng.integers(width * 3 // 10, width * 7 // 10 + 1))
    bh = int(rng.integers(height * 3 // 10, height * 7 // 10 + 1))
    x1, y1 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
    img[y1:y1 + bh, x1:x1 + bw] = COLOURS_BGR[label % len(COLOURS_BGR)]
    return img, label, np.array([x1, y1, x1 + bw, y1 + bh], dtype=np.float64)


def make_synthetic_set(out_dir: str | os.PathLike, train: int, val: int, height: int = 48, width: int = 60,
                       classes: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train`` + ``val`` images under ``out_dir/images`` and the lists ``train.txt`` / ``val.txt`` (absolute
    image paths); returns the two list paths."""
    from vggproto.data.datum import opencv
    cv2 = opencv()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    photos = _photos()
    rng = np.random.default_rng(seed)
    lists = []
    for split, n in (("train", train), ("val", val)):
        lines = []
        for i in range(n):
            img, label, box = synthetic_image(photos[int(rng.integers(len(photos)))], rng, height, width, classes)
            path = out / "images" / f"{split}_{i:05d}.png"
            cv2.imwrite(str(path), img)
            lines.append(f"{path} {label} " + " ".join(f"{v:g}" for v in box))
        lists.append(out / f"{split}.txt")
        lists[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lists[0], lists[1]


def class_list(box_list: str | os.PathLike) -> Path:
    """Write ``<box list stem>_classes.txt`` next to ``box_list``: its ``<image> <class>`` pairs, the ImageData list
    of a classification net for the same images; returns its path."""
    box_list = Path(box_list)
    lines = [" ".join(line.split()[:2]) for line in box_list.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = box_list.with_name(f"{box_list.stem}_classes.txt")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def synthetic_nets(train_list: str | os.PathLike, val_list: str | os.PathLike, config: str = "A",
                   regression: str = "scr", classes: int = 3, crop: int = 48, width_divisor: int = 8,
                   batch: int = 16, val_batch: int = 40,
                   task: str = "localization") -> tuple[caffe_pb2.NetParameter, caffe_pb2.NetParameter]:
    """(train_val, deploy) NetParameters of a reduced-width localisation (or, with ``task="classification"``,
    classification: ImageData over :func:`class_list` lists) net for the synthetic set.

    Three departures from the ImageNet recipe make the small CPU run learn in a few hundred iterations: inputs
    scaled by 1/64 (``transform_param.scale``; with MSRA fillers the raw 0-255 range blows the loss up), no dropout
    (it mostly adds noise to a 4-output regression this small) and MSRA initialisation.  Widths / 8 rather than / 16:
    with 4 conv1 filters an unlucky initialisation left one run of six at 67% IoU > 0.5 instead of 95%.
    """
    from vggproto.vgg.generate import build_net
    common = dict(task=task, num_classes=classes, crop_size=crop, width_divisor=width_divisor, init="msra")
    if task == "localization":
        common["regression"] = regression
        sources = dict(data="imagedata", train_source=str(train_list), val_source=str(val_list))
    else:
        sources = dict(data="imagedata", train_source=str(class_list(train_list)),
                       val_source=str(class_list(val_list)))
    train_val = build_net(config, "train_val", scale=str(crop), test_scale=crop, mean_value=(128.0,),
                          batch_size=batch, test_batch_size=val_batch, color_shift_std=0.0, **sources, **common)
    for layer in train_val.layer:
        if layer.type in ("BoxData", "ImageData"):
            layer.transform_param.scale = 1 / 64
        if layer.type == "Dropout":
            layer.dropout_param.dropout_ratio = 0.0
    deploy = build_net(config, "deploy", deploy_batch_size=1, **common)
    return train_val, deploy


def synthetic_solver(net_path: str | os.PathLike, iterations: int, lr: float = 0.002,
                     snapshot_prefix: str = "") -> caffe_pb2.SolverParameter:
    """An Adam solver (Caffe's ``type: "Adam"``) for :func:`synthetic_nets`' train_val net."""
    from vggproto.caffe.proto import caffe_pb2
    return caffe_pb2.SolverParameter(net=str(net_path), base_lr=lr, lr_policy="fixed", momentum=0.9,
                                     momentum2=0.999, weight_decay=0.0, max_iter=iterations, display=0,
                                     test_iter=[1], test_interval=max(1, iterations), random_seed=1, type="Adam",
                                     snapshot_prefix=snapshot_prefix or str(Path(net_path).parent / "snap"),
                                     test_initialization=False)
