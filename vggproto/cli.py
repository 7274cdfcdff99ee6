"""The ``vggproto`` command line: a thin click group whose commands live in :mod:`vggproto.commands`.

Each module in ``vggproto/commands/`` exposes ``commands``, a list of click commands; they are collected here,
so adding a command never touches this file.  Library errors (:class:`VGGProtoError`) become one line on stderr
and exit status 1; click's usage errors (an unknown flag, a missing argument) one ``vggproto: usage error:`` line
and exit status 2; only bugs print a traceback.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from vggproto.errors import VGGProtoError, elide_words


class _OneLineUsageError(click.UsageError):
    """Click's usage error printed as one line (click prints four: usage, hint, blank, error)."""

    def show(self, file=None) -> None:
        path, ctx = [], self.ctx
        while ctx is not None and ctx.parent is not None:   # the subcommands, whatever the program is called
            path, ctx = [ctx.info_name or "", *path], ctx.parent
        hint = f" (try 'vggproto {' '.join([*path, '--help'])}')"
        message = " ".join(self.format_message().split())
        click.echo(f"vggproto: usage error: {message}{hint}", file=file, err=file is None)


#: A group called without a subcommand raises this to print its help (click >= 8.2): that stays as it is.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", _OneLineUsageError)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (_OneLineUsageError, _HELP)):
        return exc
    return _OneLineUsageError(exc.format_message(), exc.ctx)


class _Group(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None
        except VGGProtoError as exc:
            click.echo(f"vggproto: error: {elide_words(str(exc))}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("vggproto: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(package_name="vggproto")
def main(verbose: bool, quiet: bool) -> None:
    """vggproto: Caffe-compatible toolchain for the VGG very deep ConvNets (Simonyan & Zisserman, 2015)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if callable(getattr(sys.stdout, "reconfigure", None)):
        # results on stdout and log lines on stderr, sent to one file or pipe, must stay in the order they happened
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if verbose or quiet:  # basicConfig does nothing where logging is already set up (an embedding app, pytest)
        logger = logging.getLogger("vggproto")
        previous = logger.level
        logger.setLevel(level)
        click.get_current_context().call_on_close(lambda: logger.setLevel(previous))


def _register_commands() -> None:
    import vggproto.commands as package
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vggproto.commands.{info.name}")
        for command in getattr(module, "commands", []):
            main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
