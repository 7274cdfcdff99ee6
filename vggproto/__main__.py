"""``python -m vggproto``: the same command line as the ``vggproto`` console script.

``python -m`` puts the working directory first on ``sys.path``; the console script does not, and neither does
Caffe's ``caffe`` tool (its embedded Python finds a Python layer's module on PYTHONPATH only), so that entry is
taken out again: a stray ``.py`` beside a model is never imported by running it.
"""
import os
import sys

from vggproto.cli import main

if __name__ == "__main__":
    if not getattr(sys.flags, "safe_path", False) and sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    main(prog_name="vggproto")
