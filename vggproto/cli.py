"""The ``vggproto`` command line: a thin click group whose commands live in :mod:`vggproto.commands`.

Each module in ``vggproto/commands/`` exposes ``commands``, a list of click commands; they are collected here,
so adding a command never touches this file.  Library errors (:class:`VGGProtoError`) become one line on stderr
and exit status 1; only bugs print a traceback.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from vggproto.errors import VGGProtoError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VGGProtoError as exc:
            click.echo(f"vggproto: error: {exc}", err=True)
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
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _register_commands() -> None:
    import vggproto.commands as package
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"vggproto.commands.{info.name}")
        for command in getattr(module, "commands", []):
            main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
