"""Which dimensions of an exported ONNX graph may be dynamic, found by running the interpreter at other shapes.

The interpreter (Caffe's semantics) decides: if it runs the net at another batch size, the batch may be dynamic;
if it runs at twice the height and width of the 4-D image inputs, those may be.  A layer that cannot take the
new shape fails there with its own error, which names it: that dimension stays fixed and the export says why.
Whether the traced graph really follows is checked afterwards in onnxruntime (:mod:`vggproto.convert.onnx_check`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vggproto.convert.onnx_check import Feed, Run, examples, is_image

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import Net


@dataclass
class Plan:
    """What the interpreter runs besides the declared shapes: another ``batch`` (None: the batch stays fixed),
    a ``scale`` of 2 when it also runs at twice the height and width of the 4-D inputs (1: they stay fixed),
    the output shapes at each run, and one line for each dimension kept fixed."""

    batch: int | None
    scale: int
    shapes: dict[Run, list[tuple[int, ...]]]
    fixed: list[str]


def _output_shapes(module: torch.nn.Module, net: Net, inputs: list[str], run: Run,
                   feed: Feed) -> list[tuple[int, ...]] | str:
    """The interpreter's output shapes at ``run``, or the one-line reason it cannot run there, naming the
    layer that failed (a hook remembers the layer running, for errors from torch that do not name it)."""
    import torch
    running: list[str] = []
    hooks = [layer.register_forward_pre_hook(lambda module, args, name=name: running.append(name))
             for name, layer in zip(net.layer_names, net.layer_list)]
    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in module(*examples(net, inputs, run, 3, feed))]
    except Exception as exc:   # noqa: BLE001 — any failure means "this net does not take that shape"
        text = " ".join(str(exc).split()) or type(exc).__name__
        if running and "layer '" not in text:
            text = f"layer '{running[-1]}' ({net.layer_dict[running[-1]].spec.param.type}): {text}"
        return text[:300]
    finally:
        for hook in hooks:
            hook.remove()


def probe(module: torch.nn.Module, net: Net, inputs: list[str], outputs: list[str], feed: Feed,
          spatial: bool, batch: bool = True) -> Plan:
    """Which dimensions may be dynamic: the batch if the interpreter also runs at another batch size, and the
    height and width of the 4-D inputs if it runs at twice them (and ``spatial``).  A net that only runs at
    its declared shapes (recurrent layers, fixed Reshape dims, InnerProduct after a convolution) keeps them,
    and the reason, naming the interpreter's layer, is one of the plan's ``fixed`` lines.  ``batch=False``: the
    batch is kept as declared without trying another."""
    plan = Plan(None, 1, {Run(): [tuple(net.blob_shapes[name]) for name in outputs]}, [])
    if batch:
        other = 2 if all(net.blob_shapes[name][:1] in ((), (1,)) for name in inputs) else 1
        found = _output_shapes(module, net, inputs, Run(other), feed)
        if isinstance(found, str):
            plan.fixed.append(f"batch fixed as declared: {found}")
        else:
            plan.batch, plan.shapes[Run(other)] = other, found
    if spatial and any(is_image(net.blob_shapes[name]) for name in inputs):
        run = size_run(plan.batch is not None, 2)
        found = _output_shapes(module, net, inputs, run, feed)
        if isinstance(found, str):
            plan.fixed.append(f"height and width fixed as declared: {found}")
        else:
            plan.scale, plan.shapes[run] = 2, found
    return plan


def size_run(batch: bool, scale: int) -> Run:
    """The run that checks ``scale`` times the height and width: at batch 1 where the batch is dynamic (the
    sizes do not depend on it, and a declared batch of 10 would cost ten images at four times the pixels)."""
    return Run(1 if batch else None, scale)


def axes_for(net: Net, inputs: list[str], outputs: list[str], plan: Plan, batch: bool,
          spatial: bool) -> dict[str, dict[int, str]]:
    """The exporter's ``dynamic_axes``: axis 0 of every input ("batch") and H, W of the 4-D inputs where
    dynamic; of each output, exactly the axes whose size changed between the interpreter's runs."""
    images = [name for name in inputs if is_image(net.blob_shapes[name])]
    axes: dict[str, dict[int, str]] = {}
    for name in inputs:
        named = {0: "batch"} if batch and net.blob_shapes[name] else {}
        if spatial and name in images:
            prefix = "" if len(images) == 1 else f"{name}_"
            named.update({2: f"{prefix}height", 3: f"{prefix}width"})
        axes[name] = named
    declared = plan.shapes[Run()]
    for index, name in enumerate(outputs):
        named = {}
        for run, shapes in plan.shapes.items():
            if (run.scale != 1 and not spatial) or (run.scale == 1 and run.batch is not None and not batch):
                continue
            for axis, (was, now) in enumerate(zip(declared[index], shapes[index])):
                if was != now and (axis or batch):
                    named[axis] = "batch" if run.batch is not None and axis == 0 else f"{name}_{axis}"
        axes[name] = named
    return {name: named for name, named in axes.items() if named}
