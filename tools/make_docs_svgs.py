#!/usr/bin/env python3
"""Regenerate docs/<cfg>_deploy.svg (one drawing per generated VGG config) from nets/<cfg>_deploy.prototxt.

Usage: python tools/make_docs_svgs.py [--rankdir TB] [--kinds deploy train_val dense]
Needs the graphviz ``dot`` program (``make graphviz``).  Top-to-bottom layout, since a 19-layer net drawn left to
right is ~12000 px wide.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vggproto.errors import VGGProtoError  # noqa: E402
from vggproto.viz.draw import DrawOptions, draw_net  # noqa: E402

CONFIGS = ("A", "A-LRN", "B", "C", "D", "E")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankdir", default="TB", choices=("LR", "TB", "BT", "RL"))
    parser.add_argument("--kinds", nargs="+", default=["deploy"], choices=("deploy", "train_val", "dense"))
    args = parser.parse_args()
    written = 0
    for kind in args.kinds:
        for config in CONFIGS:
            net = ROOT / "nets" / f"{config}_{kind}.prototxt"
            if not net.exists():
                print(f"skip {net.relative_to(ROOT)} (not generated)")
                continue
            out = ROOT / "docs" / f"{config}_{kind}.svg"
            try:
                draw_net(str(net), out, DrawOptions(rankdir=args.rankdir))
            except VGGProtoError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"wrote {out.relative_to(ROOT)}")
            written += 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
