"""Caffe's log dialect: glog's line prefix and C++'s default number format.

Tools written for Caffe logs (``tools/extra/parse_log.py``, plot scripts, greps in shell scripts) read the time
from glog's ``I1125 20:11:14.873082 pid file:line]`` prefix and the numbers as ``operator<<`` prints a float, so
every vggproto log line that mirrors a Caffe line is formatted here.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os


def fmt(value: float) -> str:
    """A number as C++ ``operator<<`` prints it with the default precision (6 significant digits)."""
    text = "%g" % float(value)
    return {"inf": "inf", "-inf": "-inf"}.get(text, text)


#: The Caffe source file whose log lines a vggproto logger writes (scripts grep for ``solver.cpp:``,
#: ``sgd_solver.cpp:``, ``net.cpp:``); other loggers name their own file.
CAFFE_SOURCES: dict[str, str] = {
    "vggproto.train.solver.sgd": "sgd_solver.cpp",
    "vggproto.train.solver.caffe": "caffe.cpp",
    "vggproto.train.solver": "solver.cpp",
    "vggproto.net.interpreter": "net.cpp",
}


def caffe_source(record: logging.LogRecord) -> str:
    """The file name in a glog prefix: the Caffe file that logs this line in Caffe, else the Python file."""
    return CAFFE_SOURCES.get(record.name, os.path.basename(record.pathname))


class GlogFormatter(logging.Formatter):
    """glog's line prefix ``I1125 20:11:14.873082 12345 solver.cpp:42] message`` (I/W/E/F by level; the thread
    id right-aligned in 5 columns, as glog's ``setw(5)``)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _dt.datetime.fromtimestamp(record.created)
        level = {"WARNING": "W", "ERROR": "E", "CRITICAL": "F"}.get(record.levelname, "I")
        prefix = (f"{level}{stamp:%m%d %H:%M:%S}.{stamp.microsecond:06d} {record.process:>5} "
                  f"{caffe_source(record)}:{record.lineno}] ")
        return prefix + record.getMessage()
