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


class GlogFormatter(logging.Formatter):
    """glog's line prefix ``I1125 20:11:14.873082 12345 solver.py:42] message`` (I/W/E/F by level)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _dt.datetime.fromtimestamp(record.created)
        level = {"WARNING": "W", "ERROR": "E", "CRITICAL": "F"}.get(record.levelname, "I")
        prefix = (f"{level}{stamp:%m%d %H:%M:%S}.{stamp.microsecond:06d} {record.process} "
                  f"{os.path.basename(record.pathname)}:{record.lineno}] ")
        return prefix + record.getMessage()
