"""Caffe's NetStateRule filtering (BVLC/caffe:src/caffe/net.cpp, FilterNet / StateMeetsRule).

One place decides which layers exist for a phase, level and set of stages; the interpreter, the drawing code
and the generator's tests all call it.
"""
from __future__ import annotations

from typing import Iterable

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PrototxtError

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def make_state(phase: str | int = "TEST", level: int = 0, stages: Iterable[str] = ()) -> caffe_pb2.NetState:
    """Build a NetState from a phase name (or enum value), a level and stages."""
    if isinstance(phase, str):
        if phase.upper() not in PHASES:
            raise PrototxtError(f"unknown phase '{phase}'; supported: TRAIN, TEST")
        phase = PHASES[phase.upper()]
    return caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    """A rule is met iff its phase (if set) matches, level is within [min_level, max_level], every ``stage`` is
    in the state and no ``not_stage`` is."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(stage not in stages for stage in rule.stage):
        return False
    return not any(stage in stages for stage in rule.not_stage)


def layer_included(layer: caffe_pb2.LayerParameter, state: caffe_pb2.NetState, path: str | None = None) -> bool:
    """FilterNet's decision for one layer: include rules -> any met; else excluded if any exclude rule is met."""
    if layer.include and layer.exclude:
        raise PrototxtError("a layer may have include rules or exclude rules, not both", path=path,
                            layer=layer.name, layer_type=layer.type)
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


def filter_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
               path: str | None = None) -> caffe_pb2.NetParameter:
    """Return a copy of ``net`` holding only the layers included for ``state``; the copy's state is ``state``."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layer for layer in net.layer if layer_included(layer, state, path))
    out.state.CopyFrom(state)
    return out


def merged_state(net: caffe_pb2.NetParameter, phase: str | int, level: int = 0,
                 stages: Iterable[str] = ()) -> caffe_pb2.NetState:
    """The net's own ``state`` overridden by the given phase, with level and stages added (Caffe's Net ctor)."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    given = make_state(phase, level, stages)
    state.phase = given.phase
    if level:
        state.level = level
    state.stage.extend(s for s in given.stage if s not in state.stage)
    return state
