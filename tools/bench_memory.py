#!/usr/bin/env python
"""Training-step memory: peak RSS growth of one forward + backward of a VGG deploy net through the interpreter,
against torchvision's twin (the baseline), each in a fresh process on the CPU.

    python tools/bench_memory.py [--config A] [--batch 8]

Growth is ``ru_maxrss`` after the step minus ``ru_maxrss`` once the model and input exist, so it counts the
activations autograd keeps plus transients, not the weights.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TWINS = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def child(case: str, config: str, batch: int) -> dict:
    import resource

    import torch
    torch.set_num_threads(2)
    x = torch.randn(batch, 3, 224, 224)
    if case == "torchvision":
        import torchvision
        model = getattr(torchvision.models, TWINS[config])()

        def step():
            torch.softmax(model(x), 1).sum().backward()
    else:
        sys.path.insert(0, str(ROOT))
        from vggproto.net.interpreter import Net
        net = Net(str(ROOT / "nets" / f"{config}_deploy.prototxt"), seed=0)

        def step():
            net(data=x)["prob"].sum().backward()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return {"growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}


def run(case: str, config: str, batch: int) -> float:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'tools')!r}); import bench_memory as b; "
            f"print(json.dumps(b.child({case!r}, {config!r}, {batch})))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["growth_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(TWINS), default="A")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {case: min(run(case, args.config, args.batch) for _ in range(args.repeat))
               for case in ("torchvision", "vggproto")}
    print(f"VGG-{args.config} forward + backward, batch {args.batch}, CPU: peak RSS growth (min of {args.repeat})")
    for case, mb in results.items():
        print(f"  {case:12s} {mb:8.0f} MB   {mb / results['torchvision']:.2f}x torchvision")


if __name__ == "__main__":
    main()
