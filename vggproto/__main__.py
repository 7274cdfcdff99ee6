"""``python -m vggproto``: the same command line as the ``vggproto`` console script."""
from vggproto.cli import main

if __name__ == "__main__":
    main(prog_name="vggproto")
