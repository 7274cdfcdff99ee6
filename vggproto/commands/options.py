"""The click options and value types several commands share, so each flag is parsed (and fails) one way.

A bad value is a usage error, as it is for click's own types (``--batch abc``): the CLI prints one ``vggproto:
usage error:`` line naming the flag and exits 2.  Importing this module never imports torch
(the CLI imports every command module at start-up): ``--gpus`` values are handed to
:func:`vggproto.net.devices.parse_devices` when a command that takes the flag parses its arguments.
"""
from __future__ import annotations

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
    from vggproto.caffe.dialects import DIALECTS
    return click.option("--dialect", type=click.Choice(list(DIALECTS)), default=None,
                        help="Schema of the Caffe fork the files follow (default: BVLC, or the fork whose fields "
                             "the net uses, with a warning).")(fn)


# ------------------------------------------------------------------------------ Caffe's (gflags) flag spellings

_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


def _long_options(command: click.Command, ctx: click.Context | None) -> dict[str, click.Option]:
    """Every long option of ``command`` (``--help`` too, given ``ctx``) by its name, dashes and underscores alike."""
    found: dict[str, click.Option] = {}
    for param in (command.get_params(ctx) if ctx is not None else command.params):
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("--"):
                    found[opt[2:].replace("_", "-")] = param
    return found


def _flag_off(param: click.Option) -> list[str]:
    """A boolean flag set false: its ``--no-x`` spelling, or nothing (a plain flag's default is off)."""
    return [param.secondary_opts[0]] if param.secondary_opts else []


def _gflag(token: str, options: dict[str, click.Option]) -> tuple[list[str], bool]:
    """One token rewritten into click's spelling, and whether the next token is this option's value."""
    name, sep, value = token.lstrip("-").partition("=")
    key = name.replace("_", "-")
    param = options.get(key)
    if param is None and key.startswith("no") and getattr(options.get(key[2:]), "is_flag", False):
        return _flag_off(options[key[2:]]), False            # gflags' -noflag
    if param is None:   # said as the user spelled it (click would read -bogus as -b -o -g ...)
        import difflib
        near = difflib.get_close_matches(key, list(options), n=3)
        raise click.NoSuchOption(token, possibilities=[f"-{n.replace('-', '_')}" for n in near])
    if param.is_flag:
        if not sep or value.lower() in _TRUE:
            return [f"--{key}"], False
        if value.lower() in _FALSE:
            return _flag_off(param), False
        raise click.UsageError(f"-{name} is a boolean flag (true or false), got '{value}'")
    return ([f"--{key}={value}"], False) if sep else ([f"--{key}"], True)


def gflags_args(command: click.Command, args: list[str], ctx: click.Context | None = None) -> list[str]:
    """Caffe's gflags spellings -> click's: ``-flag value``, ``-flag=value``, ``--flag=value``, ``--flag value``,
    ``flag_name`` or ``flag-name``, booleans as ``-gray``, ``-gray=true``, ``-nogray``.

    Caffe users' scripts pass single-dash long flags, which click would split into short options; rewriting them
    before click parses keeps one parser (and its messages) for both spellings.  Tokens that are values, short
    options (``-h``) and everything after ``--`` pass through unchanged; an unknown flag is a usage error.
    """
    options, out, takes_value = _long_options(command, ctx), [], False
    for i, token in enumerate(args):
        if token == "--":
            return out + args[i:]
        if takes_value or not token.startswith("-") or len(token) < 3 and not token.startswith("--"):
            out.append(token)
            takes_value = False
            continue
        rewritten, takes_value = _gflag(token, options)
        out += rewritten
    return out


class CaffeCommand(click.Command):
    """A click command that also reads Caffe's gflags spellings (:func:`gflags_args`), for the commands that
    mirror a Caffe tool so a Caffe user's script changes one word."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            args = gflags_args(self, list(args), ctx)
        except click.UsageError as exc:
            exc.ctx = exc.ctx or ctx
            raise
        return super().parse_args(ctx, args)
