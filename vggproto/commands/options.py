"""The click options and value types several commands share, so each flag is parsed (and fails) one way.

A bad value is a usage error, as it is for click's own types (``--batch abc``): the CLI prints one ``vggproto:
usage error:`` line naming the flag and exits 2.  Importing this module never imports torch
(the CLI imports every command module at start-up): ``--gpus`` values are handed to
:func:`vggproto.net.devices.parse_devices` when a command that takes the flag parses its arguments.
"""
from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Callable

import click

from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import MEAN_BGR

if TYPE_CHECKING:
    from vggproto.net.devices import Devices

#: ``--mean-value``'s default: the ILSVRC-2012 mean pixel (B,G,R) the VGG nets were trained with.
MEAN_DEFAULT = ",".join(f"{v:g}" for v in MEAN_BGR)


def _flag(param: click.Parameter | None, default: str) -> str:
    """The option's first spelling (``--gpu`` or ``--gpus``), for messages."""
    return param.opts[0] if param is not None and param.opts else default


class _ValueType(click.ParamType):
    """A click type whose :meth:`parse` raises :class:`VGGProtoError` for a bad value; click sees a usage error
    (exit 2, one line) with that message, so every option value fails the way click's own types do."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.parse(value, param, ctx)
        except VGGProtoError as exc:
            raise click.UsageError(str(exc), ctx) from None

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        raise NotImplementedError


class IntList(_ValueType):
    """``256,384,512`` -> ``(256, 384, 512)``."""

    name = "INTS"

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        what = _flag(param, "value")
        try:
            values = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            raise VGGProtoError(f"{what} takes comma-separated integers, got '{value}'") from None
        if not values:
            raise VGGProtoError(f"{what} is empty")
        return values


class MeanValue(_ValueType):
    """``104,117,124`` (B,G,R) or one number for every channel -> a tuple of 1 or 3 floats."""

    name = "B,G,R"

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        what = _flag(param, "--mean-value")
        try:
            values = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            raise VGGProtoError(f"{what} takes comma-separated numbers (B,G,R), got '{value}'") from None
        if len(values) not in (1, 3):
            raise VGGProtoError(f"{what} takes 1 or 3 numbers (B,G,R), got {len(values)}")
        return values


class NameList(_ValueType):
    """``a,b`` -> ``("a", "b")``: stages, or weight files applied in order (empty parts dropped)."""

    name = "A,B"

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(v for v in str(value).split(",") if v)


class TrainScales(_ValueType):
    """``256`` / ``256-512`` / ``none`` (one), or ``48,32-64`` (several): training scales S, fixed or jittered."""

    name = "S[,SMIN-SMAX]"

    def __init__(self, several: bool = False):
        self.several = several

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from vggproto.vgg.configs import parse_scale
        if isinstance(value, tuple):
            return value
        parts = tuple(v.strip() for v in str(value).split(",")) if self.several else (str(value).strip(),)
        for part in parts:
            try:
                parse_scale(part)
            except ValueError as exc:
                raise VGGProtoError(f"{_flag(param, '--scale')}: {exc}") from None
        return parts if self.several else parts[0]


class ModelPair(_ValueType):
    """``DEPLOY:WEIGHTS`` (split at the last colon) -> ``(deploy, weights)``, both existing files."""

    name = "DEPLOY:WEIGHTS"

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        what = _flag(param, "value")
        deploy, sep, weights = str(value).rpartition(":")
        if not sep or not deploy or not weights:
            raise VGGProtoError(f"{what} takes DEPLOY:WEIGHTS, got '{value}'")
        for path in (deploy, weights):
            if not os.path.exists(path):
                raise VGGProtoError(f"{what} {value}: no such file '{path}'")
        return deploy, weights


class GpusType(_ValueType):
    """``--gpus`` / ``--gpu`` -> :class:`vggproto.net.devices.Devices`; ``one_device`` refuses lists."""

    name = "GPUS"

    def __init__(self, one_device: bool = False):
        self.one_device = one_device

    def parse(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Devices:
        from vggproto.net.devices import Devices, parse_devices  # the net package imports torch
        if isinstance(value, Devices):
            return value
        single = (ctx.info_name if ctx is not None and ctx.info_name else "this command") if self.one_device else None
        return parse_devices(str(value), _flag(param, "--gpus"), single)


def gpus_option(*names: str, one_device: bool = True, help: str | None = None) -> Callable:
    """The ``--gpus``/``--gpu`` option (``names``: its spellings, the first used in messages) as ``gpus``.

    One-device commands get a :class:`Devices` (default: the CPU) whose ``.device`` is the torch device; the
    others (``train``) get None when the flag is absent, so Caffe's solver_mode rule can apply.
    """
    names = names or ("--gpus", "--gpu")
    default_help = ("GPU id, e.g. 0, or cpu (one device). Default: CPU." if one_device else
                    "GPU ids '0,1', 'all', or 'cpu:N' for N CPU workers.")
    return click.option(*names, "gpus", type=GpusType(one_device), default="cpu" if one_device else None,
                        help=help or default_help)


def preprocess_options(fn: Callable) -> Callable:
    """``--mean-value`` and ``--input-scale``: how deploy-time tools normalise pixels, as the training transform."""
    fn = click.option("--input-scale", type=float, default=1.0, show_default=True,
                      help="Multiplies (pixel - mean), like the training net's transform_param.scale.")(fn)
    return click.option("--mean-value", type=MeanValue(), default=MEAN_DEFAULT, show_default=True,
                        help="BGR mean pixel subtracted.")(fn)


def force_option(fn: Callable) -> Callable:
    """``--force``: replace an existing output of another kind (or an existing database); an output that is
    also one of the command's inputs is refused even so, since writing it would destroy the input."""
    return click.option("--force", is_flag=True,
                        help="Replace an existing output of another kind, or an existing database (an output "
                             "that is also an input is always refused).")(fn)


def dialect_option(fn: Callable) -> Callable:
    """``--dialect NAME``: read the net in a Caffe fork's schema (default: BVLC, or the fork whose fields it uses)."""
    from vggproto.caffe.dialect_table import DIALECTS
    return click.option("--dialect", type=click.Choice(list(DIALECTS)), default=None,
                        help="Schema of the Caffe fork the files follow (default: BVLC, or the fork whose fields "
                             "the net uses, with a warning).")(fn)


def level_option(fn: Callable) -> Callable:
    """``--level``: the net state's level (NetState.level), 0 unless given, as Caffe's ``-level``."""
    # Caffe: tools/caffe.cpp DEFINE_int32(level, 0, ...)
    return click.option("--level", type=int, default=0, show_default=True,
                        help="Network level (NetState.level; train_state.level for training).")(fn)


def stage_option(fn: Callable) -> Callable:
    """``--stage a,b``: the net state's stages (NetState.stage), as Caffe's ``-stage``."""
    return click.option("--stage", type=NameList(), default="",
                        help="Network stages, comma-separated (NetState.stage).")(fn)


def with_defaults(command: click.Command, name: str | None = None, help: str | None = None,
                  **defaults: Any) -> click.Command:
    """``command`` registered again (as ``name``, with ``help``) with other defaults for the options named in
    ``defaults``: one definition of a tool serves both its spellings, and a spelling that must differ says where."""
    alias = copy.copy(command)
    alias.params = []
    for param in command.params:
        if param.name in defaults:
            param = copy.copy(param)
            param.default = defaults.pop(param.name)
        alias.params.append(param)
    if defaults:
        raise TypeError(f"{command.name} has no options {sorted(defaults)}")
    alias.name, alias.help = name or command.name, help or command.help
    return alias
