"""Caffe's own command lines, so a Caffe user's script changes one word (``caffe`` -> ``vggproto caffe``).

Every tool here is a vggproto command registered again under Caffe's spelling, never a second definition:
``vggproto caffe train|test|time|device_query`` are ``train``, ``test``, ``time`` and ``device_query``, and
``convert_imageset``, ``compute_image_mean`` and ``upgrade_net_proto_text|_binary``/``upgrade_solver_proto_text``
are ``convert-imageset``, ``compute-mean`` and ``upgrade`` (the last with its ``--kind`` fixed by the name).  All
read gflags' spellings (``-flag value``, ``-flag=value``, underscores or dashes; see
:class:`vggproto.commands.gflags.CaffeCommand`).  Where Caffe's spelling must keep another default, the
registration says so (:func:`vggproto.commands.options.with_defaults`).
"""
from __future__ import annotations

import click

from vggproto.commands.caffe import upgrade_command
from vggproto.commands.data import compute_mean_cmd, convert_imageset_cmd
from vggproto.commands.doctor import device_query
from vggproto.commands.net import time_command
from vggproto.commands.options import with_defaults
from vggproto.commands.train import test, train


@click.group("caffe")
def caffe_group() -> None:
    """Caffe's `caffe` tool: train, test, time and device_query with its flags (-solver, -gpu, -weights, ...)."""


# Caffe: tools/caffe.cpp — train overwrites the solver's train_state.level with -level (default 0); the
# command is defined with that default, and only `vggproto train` keeps the solver file's level (commands/train.py)
caffe_group.add_command(train, name="train")
caffe_group.add_command(test, name="test")
caffe_group.add_command(time_command, name="time")
caffe_group.add_command(device_query, name="device_query")


def _upgrade_tool(name: str, kind: str, what: str) -> click.Command:
    """``upgrade`` as one of Caffe's upgrade_* tools (Caffe's IN OUT are SRC DST), reading ``kind``."""
    return with_defaults(upgrade_command, name, f"Caffe's {name}: upgrade {what} SRC into DST.", kind=kind)


commands = [caffe_group,
            with_defaults(convert_imageset_cmd, "convert_imageset"),
            with_defaults(compute_mean_cmd, "compute_image_mean"),
            _upgrade_tool("upgrade_net_proto_text", "net", "a V0/V1 net prototxt (text)"),
            _upgrade_tool("upgrade_net_proto_binary", "net", "a V0/V1 binary net (caffemodel)"),
            _upgrade_tool("upgrade_solver_proto_text", "solver", "a solver prototxt (solver_type -> type)")]
