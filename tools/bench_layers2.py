"""Benchmark: vggproto's Caffe-exact head/loss layers against the plain PyTorch op at VGG training size.

Prints, per case, the median wall time of forward+backward (or forward for forward-only layers) for vggproto and
for the named PyTorch baseline run in the same process, and their ratio. Sizes: batch 256 x 1000 classes (VGG's
fc8 during training), and a 32x512x14x14 feature map for Eltwise MAX.
Usage: python tools/bench_layers2.py [THREADS] (default 1 thread: stable numbers on a shared CI machine).
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_text
from vggproto.layers.registry import LayerSpec, build_layer


def layer(text: str, *shapes):
    param = parse_text(text, caffe_pb2.LayerParameter())
    param.name = "bench"
    param.top.append("out")
    return build_layer(LayerSpec(param, [tuple(s) for s in shapes]))


def paired_medians(ours, base, repeat: int = 31) -> tuple[float, float]:
    """Median times of ``ours`` and ``base``, run alternately so load changes on a shared machine hit both."""
    ours(), base()
    t_ours, t_base = [], []
    for _ in range(repeat):
        for fn, times in ((ours, t_ours), (base, t_base)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_base)


def with_backward(make_out, leaf: torch.Tensor):
    def run():
        leaf.grad = None
        make_out().backward()
    return run


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    n, c = 256, 1000
    score = torch.randn(n, c, requires_grad=True)
    label = torch.randint(0, c, (n,)).float()
    label[::4] = 255
    swl = layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', (n, c), (n,))
    acc = layer('type: "Accuracy" accuracy_param { top_k: 5 }', (n, c), (n,))
    feats = [torch.randn(32, 512, 14, 14, requires_grad=True) for _ in range(2)]
    emax = layer('type: "Eltwise" eltwise_param { operation: MAX }', *(f.shape for f in feats))
    cases = [
        ("SoftmaxWithLoss fwd+bwd", with_backward(lambda: swl(score, label)[0], score),
         "F.cross_entropy(ignore_index)", with_backward(
             lambda: F.cross_entropy(score, label.long(), ignore_index=255), score)),
        ("Accuracy top-5 fwd", lambda: acc(score, label),
         "topk + eq", lambda: (score.detach().topk(5, 1).indices == label.long()[:, None]).any(1).float().mean()),
        ("Eltwise MAX fwd+bwd", with_backward(lambda: emax(*feats)[0].sum(), feats[0]),
         "torch.maximum", with_backward(lambda: torch.maximum(*feats).sum(), feats[0])),
    ]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name, ours, base_name, base in cases:
        t_ours, t_base = paired_medians(ours, base)
        print(f"{name:28s} vggproto {t_ours * 1e3:8.2f} ms | {base_name:30s} {t_base * 1e3:8.2f} ms | "
              f"ratio {t_ours / t_base:5.2f}")


if __name__ == "__main__":
    main()
