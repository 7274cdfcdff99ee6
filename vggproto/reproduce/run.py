"""``vggproto reproduce`` as one library call: plan, run (resumably), then tables, claims and picture."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from vggproto.caffe.files import atomic_write_bytes
from vggproto.errors import VGGProtoError
from vggproto.reproduce import claims, picture, tables
from vggproto.reproduce.plan import Options, ScaleMap, build_plan
from vggproto.reproduce.runner import Executor, Progress, run_plan, subprocess_executor

log = logging.getLogger("vggproto.reproduce")


def describe(options: Options) -> str:
    """One line saying what ran: data, nets, recipe, seeds -- the header of TABLES.md."""
    first, later = options.lengths()
    data = f"--data {','.join(options.data)}" if options.data else f"--list {options.train_list},{options.val_list}"
    return (f"`vggproto reproduce` on {data}: configurations {', '.join(options.configs)} (widths / "
            f"{options.width_divisor}), {options.crop}-pixel crops, {options.seeds} seed(s); {first} iterations "
            f"from scratch and {later} per later chain stage at batch {options.batch_size}, init "
            f"{options.init}; {ScaleMap(options.crop, options.scales).describe()}.")


def reproduce(options: Options, execute: Executor = subprocess_executor) -> tuple[Progress, list[dict]]:
    """Run the plan in ``options.out`` (skipping complete steps) and write results.json, TABLES.md, tables.png
    there; returns the run's progress and the claims."""
    out = Path(options.out)
    steps = build_plan(options)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VGGProtoError(f"reproduce: --out {out}: cannot create the folder: {exc.strerror or exc}") from None
    log.info("%s", ScaleMap(options.crop, options.scales).describe())
    log.info("plan: %d steps, written to %s", len(steps), out / "plan.sh")
    progress = run_plan(steps, out, execute)
    results = tables.collect(out, options)
    verdicts = claims.judge(results)
    header = describe(options)
    summary = {"options": _jsonable(options), "header": header, "results": results, "claims": verdicts}
    atomic_write_bytes(out / "results.json", (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out / "TABLES.md", tables.markdown(results, verdicts, options, header).encode())
    picture.draw(results, out / "tables.png", "vggproto reproduce: top-1 error by configuration and training "
                 "scale (bars: this run; diamonds: the paper)")
    for claim in verdicts:
        log.info("claim %d, %s: %s", claim["number"], claim["claim"], claim["verdict"])
    log.info("wrote %s, %s, %s", out / "results.json", out / "TABLES.md", out / "tables.png")
    return progress, verdicts


def _jsonable(options: Options) -> dict:
    from dataclasses import asdict
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
