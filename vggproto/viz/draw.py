"""Draw a net as a graph with the ``graphviz`` package, following Caffe's ``draw_net.py`` conventions.

Caffe's conventions (python/caffe/draw.py): layer nodes are filled records coloured by type, blobs are grey
octagons, a layer's label holds its name, ``(Type)`` and for conv/pool the kernel size, stride and pad, edges into
blobs carry ``Batch N`` (data layers) or ``num_output`` (conv/IP).  Added here, because reading a VGG net needs
them: each blob's shape, each layer's parameter count and the net's total (from the interpreter's Net built
on the meta device, see :mod:`vggproto.net.shapes`), and the VGG blocks (conv<b>_*, relu<b>_*, pool<b>;
fc6/relu6/drop6...) drawn as clusters.  Phase filtering uses the interpreter's NetStateRule code, so stages and
levels count too.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterable

from vggproto.caffe.files import atomic_write_bytes, check_output
from vggproto.caffe.netstate import filter_net, merged_state
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_net
from vggproto.errors import VGGProtoError
from vggproto.net.shapes import NetShapes, phase_shapes

if TYPE_CHECKING:
    import graphviz

log = logging.getLogger("vggproto.viz.draw")

RANKDIRS = ("LR", "TB", "BT", "RL")
PHASES = ("ALL", "TRAIN", "TEST")
FORMATS = ("svg", "png", "pdf", "dot", "gv")
INSTALL_HINT = ("the graphviz 'dot' program is not installed; install it with 'apt-get install graphviz' "
                "(or 'make graphviz'), or write a .dot file instead")

# Caffe: python/caffe/draw.py — node styles and colours by layer type
LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
DEFAULT_COLOUR = "#6495ED"
NEURON_COLOUR = "#90EE90"
BLOB_STYLE = {"shape": "octagon", "style": "filled", "fillcolor": "#E0E0E0"}
_RECORD_SPECIALS = re.compile(r"([{}|<>\"])")
# Caffe labels only 'Data'; the other batched data layers are labelled the same way here.
_DATA_FIELDS = {"Data": "data_param", "ImageData": "image_data_param", "HDF5Data": "hdf5_data_param",
                "MemoryData": "memory_data_param", "WindowData": "window_data_param"}
_NUMBERED = re.compile(r"^([A-Za-z]+)(\d+)")


#: Layers above which ``rankdir: auto`` draws top to bottom (a left-to-right strip of VGG-16 is 16.6:1).
DEEP_CHAIN = 12


@dataclass
class DrawOptions:
    """How to draw: graph direction, which layers (phase/stages/level), and what to show."""

    rankdir: str = "auto"          # "auto": top-to-bottom for deep chains (> 12 layers), else Caffe's LR
    stacked_labels: bool = False   # label parts on separate lines whatever the direction (auto's TB)
    phase: str = "ALL"
    stages: tuple[str, ...] = ()
    level: int = 0
    display_lrm: bool = False
    shapes: bool = True
    clusters: bool = True
    dialect: str | None = None     # the fork schema (vggproto.caffe.dialects); None: detected


def select_layers(net: caffe_pb2.NetParameter, options: DrawOptions,
                  path: str | None = None) -> caffe_pb2.NetParameter:
    """The net as drawn: every layer for phase ALL, else the layers the interpreter would build."""
    phase = options.phase.upper()
    if phase not in PHASES:
        raise VGGProtoError(f"unknown phase '{options.phase}'; supported: " + ", ".join(PHASES))
    if phase == "ALL":
        return net
    return filter_net(net, merged_state(net, phase, options.level, options.stages), path)


def compute_shapes(net: caffe_pb2.NetParameter, options: DrawOptions,
                   path: str | None = None) -> dict[str, NetShapes]:
    """Shapes per phase name; for ALL both phases (a train_val net differs between them), else the one drawn."""
    phases = ("TEST", "TRAIN") if options.phase.upper() == "ALL" else (options.phase.upper(),)
    result = {}
    for phase in phases:
        shapes = phase_shapes(net, phase, options.level, tuple(options.stages), path, warn=len(phases) == 1,
                              dialect=options.dialect)
        if shapes is not None:
            result[phase] = shapes
    return result


def _sep(rankdir: str) -> str:
    # Caffe: python/caffe/draw.py — label parts joined by a newline for LR, by a space for TB/BT
    return "\\n" if rankdir in ("LR", "RL") else " "


def _record(text: str) -> str:
    return _RECORD_SPECIALS.sub(r"\\\1", text)


def _first(values: Iterable[int], default: int) -> int:
    values = list(values)
    return int(values[0]) if values else default


def _window(kernel: int, stride: int, pad: int, sep: str) -> str:
    return f"{sep}kernel size: {kernel}{sep}stride: {stride}{sep}pad: {pad}"


def lr_mults(layer: caffe_pb2.LayerParameter) -> tuple[float, float]:
    """Caffe: python/caffe/draw.py get_layer_lr_mult — the first two ParamSpecs' lr_mult, 1 where not given."""
    weight = layer.param[0].lr_mult if len(layer.param) > 0 else 1.0
    bias = layer.param[1].lr_mult if len(layer.param) > 1 else 1.0
    return weight, bias


def layer_label(layer: caffe_pb2.LayerParameter, rankdir: str, display_lrm: bool,
                params: str = "") -> str:
    """Caffe's node label (name, type, kernel/stride/pad, optional lr mult) plus the parameter count."""
    sep = _sep(rankdir)
    name = _record(layer.name)
    if layer.type in ("Convolution", "Deconvolution"):
        conv = layer.convolution_param
        label = f"{name}{sep}({layer.type})" + _window(conv.kernel_h or _first(conv.kernel_size, 1),
                                                       conv.stride_h or _first(conv.stride, 1),
                                                       conv.pad_h or _first(conv.pad, 0), sep)
    elif layer.type == "Pooling":
        pool = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(pool.pool)
        window = "" if pool.global_pooling else _window(pool.kernel_h or pool.kernel_size,
                                                        pool.stride_h or pool.stride, pool.pad_h or pool.pad, sep)
        label = f"{name}{sep}(Pooling {method})" + (f"{sep}global" if pool.global_pooling else window)
    else:
        label = f"{name}{sep}({_record(layer.type)})"
    if display_lrm and layer.type in ("Convolution", "Deconvolution", "InnerProduct"):
        weight, bias = lr_mults(layer)
        if weight != 0 or bias != 0:  # Caffe: python/caffe/draw.py get_layer_label — hidden when both are 0
            label += f"{sep}lr mult: {weight:.1f}, {bias:.1f}"
    if params:
        label += f"{sep}params: {params}"
    return label


def edge_label(layer: caffe_pb2.LayerParameter) -> str:
    """Caffe's edge label from a layer to its tops: ``Batch N`` for data layers, num_output for conv/IP."""
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    data_field = _DATA_FIELDS.get(layer.type)
    if data_field and layer.HasField(data_field):
        return f"Batch {getattr(layer, data_field).batch_size}"
    return ""


def is_in_place_neuron(layer: caffe_pb2.LayerParameter) -> bool:
    """Caffe draws a layer with one bottom equal to its one top as an (in-place) neuron layer."""
    return len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]


def vgg_groups(names: list[str]) -> dict[str, str]:
    """Layer name -> VGG block: conv<b>_*, relu<b>_*, pool<b>, norm<b> -> 'block <b>'; fc<n>, drop<n> and the
    relu<n> of an fc<n> -> 'fc<n>'.  Names outside this scheme get no group."""
    numbered = {name: _NUMBERED.match(name) for name in names}
    fc_numbers = {m.group(2) for m in numbered.values() if m and m.group(1).lower() == "fc"}
    groups = {}
    for name, match in numbered.items():
        if not match:
            continue
        prefix, number = match.group(1).lower(), match.group(2)
        if prefix in ("fc", "drop") or (prefix == "relu" and number in fc_numbers and "_" not in name):
            groups[name] = f"fc{number}"
        elif prefix in ("conv", "relu", "pool", "norm", "lrn"):
            groups[name] = f"block {number}"
    return groups


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def blob_label(blob: str, shapes: dict[str, NetShapes]) -> str:
    """Blob name and its shape; ``TEST: ...`` / ``TRAIN: ...`` when the phases disagree (train_val nets)."""
    found = {phase: s.blobs[blob] for phase, s in shapes.items() if s.blobs.get(blob) is not None}
    if not found:
        return blob
    if len(set(found.values())) == 1:
        return f"{blob}\\n{_shape_text(next(iter(found.values())))}"
    return blob + "".join(f"\\n{phase}: {_shape_text(shape)}" for phase, shape in found.items())


def _params(layer: str, shapes: dict[str, NetShapes]) -> str:
    for phase_shapes_ in shapes.values():
        if phase_shapes_.params.get(layer):
            count = phase_shapes_.params[layer]
            return f"{count:,}" + (" (shared)" if phase_shapes_.owned.get(layer, 0) < count else "")
    return ""


def total_params(shapes: dict[str, NetShapes]) -> int | None:
    """Learnable parameters of the net (a layer counted once even if it exists in both phases)."""
    if not shapes or any(s.unknown for s in shapes.values()):   # layers after a Python layer: no count
        return None
    merged: dict[str, int] = {}
    for phase_shapes_ in shapes.values():
        merged.update(phase_shapes_.owned)
    return sum(merged.values())


def build_graph(net: caffe_pb2.NetParameter, options: DrawOptions | None = None,
                path: str | None = None) -> "graphviz.Digraph":
    """Return a ``graphviz.Digraph`` of ``net`` drawn as ``options`` say (no file written)."""
    import graphviz

    options = options or DrawOptions()
    if options.rankdir == "auto":
        # vggproto's choice, not Caffe's: a deep chain reads top to bottom, with labels stacked as in LR
        options = replace(options, rankdir="TB", stacked_labels=True) if len(net.layer) > DEEP_CHAIN \
            else replace(options, rankdir="LR")
    if options.rankdir not in RANKDIRS:
        raise VGGProtoError(f"unknown rankdir '{options.rankdir}'; supported: " + ", ".join(RANKDIRS))
    drawn = select_layers(net, options, path)
    shapes = compute_shapes(net, options, path) if options.shapes else {}
    if options.shapes and not shapes:
        log.warning("%s: drawing without blob shapes and parameter counts (the net could not be built)",
                    path or net.name or "net")
    graph = graphviz.Digraph(name=net.name or "net", graph_attr={"rankdir": options.rankdir, "labelloc": "t"})
    total = total_params(shapes)
    title = net.name or (os.path.basename(path) if path else "net")
    if total is not None:
        title += f"\\ntotal parameters: {total:,}" + (f" ({total / 1e6:.1f}M)" if total >= 100_000 else "")
    elif any(s.unknown for s in shapes.values()):
        title += "\\nno shapes from Python layers on (their code runs only when the net runs)"
    graph.attr(label=title, fontsize="20")
    members, edges = _layout(drawn, options, shapes)
    _emit(graph, members, edges)
    return graph


def _phase_tag(layer: caffe_pb2.LayerParameter) -> str:
    """``TRAIN``/``TEST`` for a layer that an include/exclude rule ties to one phase (shown when drawing ALL)."""
    rules = [r for r in layer.include if r.HasField("phase")]
    if rules and len({r.phase for r in rules}) == 1:
        return caffe_pb2.Phase.Name(rules[0].phase)
    rules = [r for r in layer.exclude if r.HasField("phase")]
    if rules and len({r.phase for r in rules}) == 1:
        return "not " + caffe_pb2.Phase.Name(rules[0].phase)
    return ""


def _layout(drawn: caffe_pb2.NetParameter, options: DrawOptions,
            shapes: dict[str, NetShapes]) -> tuple[dict, list[tuple[str, str, str]]]:
    """Nodes per cluster (None = top level) as (key, label, style), and edges as (src, dst, label)."""
    groups = vgg_groups([layer.name for layer in drawn.layer]) if options.clusters else {}
    members: dict[str | None, list[tuple[str, str, dict]]] = {}
    edges: list[tuple[str, str, str]] = []
    blob_group: dict[str, str | None] = {}
    seen: set[str] = set()
    label_dir = "LR" if options.stacked_labels else options.rankdir
    sep = _sep(label_dir)
    for layer in drawn.layer:
        key = f"{layer.name}_{layer.type}"  # Caffe's node key; a train_val net's two 'data' layers get two nodes
        key = key if key not in seen else f"{key}_{len(seen)}"
        seen.add(key)
        label = layer_label(layer, label_dir, options.display_lrm, _params(layer.name, shapes))
        if options.phase.upper() == "ALL" and _phase_tag(layer):
            label += f"{sep}[{_phase_tag(layer)}]"
        group = groups.get(layer.name)
        members.setdefault(group, []).append((key, label, _layer_style(layer)))
        for bottom in layer.bottom:
            blob_group.setdefault(bottom, None)
            edges.append((f"{bottom}_blob", key, ""))
        for top in layer.top:
            if blob_group.get(top) is None and top not in layer.bottom:
                blob_group[top] = group
            edges.append((key, f"{top}_blob", edge_label(layer)))
    for blob, group in blob_group.items():
        members.setdefault(group, []).append((f"{blob}_blob", blob_label(blob, shapes), BLOB_STYLE))
    return members, edges


def _layer_style(layer: caffe_pb2.LayerParameter) -> dict:
    colour = NEURON_COLOUR if is_in_place_neuron(layer) else LAYER_COLOURS.get(layer.type, DEFAULT_COLOUR)
    return {"shape": "record", "style": "filled", "fillcolor": colour}


def _emit(graph: "graphviz.Digraph", members: dict, edges: list[tuple[str, str, str]]) -> None:
    for group, nodes in members.items():
        if group is None:
            for key, label, style in nodes:
                graph.node(key, label=label, **style)
            continue
        with graph.subgraph(name="cluster_" + group.replace(" ", "")) as cluster:
            cluster.attr(label=group, style="rounded,dashed", color="#808080", fontsize="14")
            for key, label, style in nodes:
                cluster.node(key, label=label, **style)
    for src, dst, label in edges:
        graph.edge(src, dst, label=label) if label else graph.edge(src, dst)


def write_graph(graph: "graphviz.Digraph", out: str | os.PathLike, any_format: bool = False) -> str:
    """Write ``graph`` to ``out`` in the format its extension names; ``.dot``/``.gv`` need no graphviz binary.
    ``any_format`` hands any other extension graphviz knows (``.jpg``, ``.gif``...) to it, as pycaffe does."""
    import graphviz

    out = os.fspath(out)
    fmt = os.path.splitext(out)[1].lower().lstrip(".")
    known = graphviz.FORMATS if any_format else FORMATS
    if fmt not in known:
        raise VGGProtoError(f"{out}: cannot draw to '.{fmt}'; supported: " + ", ".join(f".{f}" for f in FORMATS)
                            + (" and graphviz's other output formats" if any_format else ""))
    if fmt in ("dot", "gv"):
        data = graph.source.encode("utf-8")
    else:
        try:
            data = graph.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise VGGProtoError(f"{out}: {INSTALL_HINT}") from None
        except graphviz.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode("utf-8", "replace").strip()
            raise VGGProtoError(f"{out}: graphviz 'dot' failed: {detail or exc}") from None
    atomic_write_bytes(out, data)
    return out


def draw_net(source: str | os.PathLike | bytes, out: str | os.PathLike, options: DrawOptions | None = None,
             force: bool = False, any_format: bool = False) -> str:
    """Read a net (prototxt path/text, V1 upgraded) and draw it into ``out`` (``any_format``: see
    :func:`write_graph`); return the path written."""
    check_output(out, inputs=(source,) if isinstance(source, (str, os.PathLike)) else (), force=force)
    net, path, _, _ = parse_net(source, dialect=(options or DrawOptions()).dialect)
    graph = build_graph(net, options, path)
    written = write_graph(graph, out, any_format)
    log.debug("Wrote %s", written)   # the command prints Caffe's "Drawing net to" line
    return written
