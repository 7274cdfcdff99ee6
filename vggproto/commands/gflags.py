"""Caffe's gflags spellings of long flags, rewritten into click's before click parses (one parser, one set of
messages for both spellings): the tokenizer and the click command class of every command that mirrors a Caffe tool.
"""
from __future__ import annotations

import click

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
