#!/usr/bin/env bash
# The built wheel, installed (not editable) into a clean venv, runs what a new user runs first: a packaging
# mistake (a module or data file left out, a missing dependency) fails here.  `make wheel-check` runs it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHEEL=$(ls "$ROOT"/build/wheel/vggproto-*.whl)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --upgrade pip
"$WORK/venv/bin/pip" install -q ${TORCH:-torch} "$WHEEL"
cd "$WORK"
VGG=venv/bin/vggproto
$VGG --help >/dev/null
venv/bin/python -m vggproto --help >/dev/null
SHOW=$(venv/bin/pip show vggproto)
grep -q "^License-Expression: BSD-2-Clause" <<< "$SHOW"
grep -q "^Summary: Caffe-compatible toolchain" <<< "$SHOW"
# images -> LMDB (OpenCV and lmdb come with the package), a tiny net trained 2 iterations, classify
venv/bin/python - <<'PY'
import cv2, numpy as np
rng = np.random.default_rng(0)
with open("list.txt", "w") as f:
    for i in range(4):
        cv2.imwrite(f"img{i}.png", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        f.write(f"img{i}.png {i % 2}\n")
PY
$VGG convert-imageset --resize-height 16 --resize-width 16 ./ list.txt train_lmdb >/dev/null
cat > net.prototxt <<'NET'
name: "smoke"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  data_param { source: "train_lmdb" batch_size: 2 backend: LMDB } transform_param { scale: 0.0039 } }
layer { name: "input" type: "Input" top: "data" include { phase: TEST } input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" include { phase: TRAIN } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
NET
cat > solver.prototxt <<'SOLVER'
net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
max_iter: 2
display: 1
snapshot_prefix: "smoke"
snapshot_after_train: true
solver_mode: CPU
SOLVER
$VGG train solver.prototxt 2> train.log
grep -q "Optimization Done." train.log
$VGG classify img0.png --model net.prototxt --weights smoke_iter_2.caffemodel --scale 16 --mean-value 0 > top.txt
grep -q "class" top.txt
echo "wheel smoke test passed: $(basename "$WHEEL")"
