#!/usr/bin/env python3
"""Training throughput: vggproto's Caffe interpreter + Caffe-exact SGD vs torchvision's vgg16, same process.

Both sides train VGG-16 (configuration D) on the same synthetic batch with bf16 autocast, channels_last and
``torch.compile`` (each switchable), and the SAME optimizer: vggproto's Caffe SGD (momentum 0.9, weight decay 5e-4,
lr folded into the history; :func:`vggproto.train.updates.apply_update`).  Rounds are interleaved after warm-up and
timed with CUDA events; the report gives img/s, the ratio vggproto / torchvision, and MFU = img/s × 92.8 GFLOP (one 224²
training step, reference performance-anchors.md) / 798 TFLOP/s (measured bf16 dense peak of an H100).

GPU only for real numbers:  python tools/bench_train.py --batch 64 --iters 20
CPU smoke test:              python tools/bench_train.py --device cpu --size 32 --batch 2 --iters 2 --no-compile \
                                 --no-channels-last
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.train import updates

STEP_GFLOP_224 = 92.8     # VGG-16 forward + backward per 224x224 image (performance-anchors.md)
PEAK_TFLOPS = 798.0       # H100 bf16 dense, measured on an 8192^3 matmul


def vgg16_train_net(batch: int, size: int) -> caffe_pb2.NetParameter:
    """The generated VGG-16 deploy net turned into a training net: Input data+label, SoftmaxWithLoss."""
    from vggproto.vgg.generate import build_net
    net = build_net("D", "deploy")
    first = net.layer[0]
    del first.input_param.shape[0].dim[:]
    first.input_param.shape[0].dim.extend([batch, 3, size, size])
    label = caffe_pb2.LayerParameter(name="label_input", type="Input", top=["label"])
    label.input_param.shape.add().dim.extend([batch])
    last = net.layer[-1]
    assert last.type == "Softmax", last.type
    last.type, last.name = "SoftmaxWithLoss", "loss"
    del last.top[:]
    last.top.append("loss")
    last.bottom.append("label")
    layers = [first, label] + list(net.layer[1:])
    del net.layer[:]
    net.layer.extend(layers)
    return net


def sgd_param() -> caffe_pb2.SolverParameter:
    return caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                                     type="SGD")


class Trainer:
    """One training step = forward + loss + backward + Caffe SGD update over ``params``."""

    def __init__(self, name, forward, params, mults, device, amp: bool):
        self.name, self.forward, self.params = name, forward, list(params)
        self.lr_mults, self.decay_mults = mults
        self.history = updates.new_history("SGD", [p.detach() for p in self.params])
        self.param, self.device, self.amp = sgd_param(), device, amp
        self.it = 0

    def step(self, x, y) -> None:
        for p in self.params:
            p.grad = None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.forward(x, y)
        loss.backward()
        updates.apply_update(self.param, [p.data for p in self.params],
                             [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params],
                             self.history, self.lr_mults, self.decay_mults, 0.01, self.it)
        self.it += 1


def make_vggproto(args, device) -> Trainer:
    from vggproto.net.interpreter import Net
    net = Net(vgg16_train_net(args.batch, args.size), phase="TRAIN", seed=0)
    with torch.no_grad():
        for lp in net.learnable_params:
            lp.param.normal_(0, 0.01 if lp.param.dim() > 1 else 0.0)
    if device.type != "cpu":  # nets are built on the CPU
        net.to(device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)

    def forward(x, y):
        net.forward(data=x, label=y)
        return net.loss
    fn = torch.compile(forward) if args.compile else forward
    lps = net.learnable_params
    return Trainer("vggproto", fn, [lp.param for lp in lps],
                   ([lp.lr_mult for lp in lps], [lp.decay_mult for lp in lps]), device, args.amp)


def make_torchvision(args, device) -> Trainer:
    import torchvision
    model = torchvision.models.vgg16(weights=None).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()

    def forward(x, y):
        return F.cross_entropy(model(x).float(), y.long())
    fn = torch.compile(forward) if args.compile else forward
    params = list(model.parameters())
    return Trainer("torchvision", fn, params, ([1.0] * len(params), [1.0] * len(params)), device, args.amp)


def time_steps(trainer: Trainer, x, y, iters: int, device) -> float:
    """Seconds per step over ``iters`` steps (CUDA events on GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            trainer.step(x, y)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        trainer.step(x, y)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-amp", dest="amp", action="store_false")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_train: no CUDA device; use --device cpu for a smoke test")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=gen).float().to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    trainers = [make_vggproto(args, device), make_torchvision(args, device)]
    for trainer in trainers:
        for _ in range(args.warmup):
            trainer.step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {t.name: [] for t in trainers}
    for _ in range(args.rounds):  # interleaved rounds
        for trainer in trainers:
            times[trainer.name].append(time_steps(trainer, x, y, args.iters, device))
    flop = STEP_GFLOP_224 * 1e9 * (args.size / 224) ** 2
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"VGG-16 training, batch {args.batch}, {args.size}x{args.size}, amp={args.amp}, "
          f"channels_last={args.channels_last}, compile={args.compile}, device {dev}")
    rates = {}
    for name, samples in times.items():
        per_step = statistics.median(samples)
        rates[name] = args.batch / per_step
        mfu = rates[name] * flop / (PEAK_TFLOPS * 1e12)
        print(f"  {name:12s} {per_step * 1000:9.2f} ms/step  {rates[name]:9.1f} img/s  MFU {mfu * 100:5.1f} %")
    print(f"  ratio vggproto/torchvision: {rates['vggproto'] / rates['torchvision']:.3f}")


if __name__ == "__main__":
    main()
