"""Structured one-line logs carrying the process identity."""

from __future__ import annotations

import logging
import os
import sys
import time


__all__ = ["setup_logging"]


class _Formatter(logging.Formatter):
    def __init__(self, proc: str) -> None:
        super().__init__()
        self.proc = proc

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        line = (f"{ts}.{int(record.msecs):03d}Z {record.levelname.lower():<7} proc={self.proc} "
                f"pid={os.getpid()} {record.name}: {msg}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str, proc: str) -> None:
    """Log to stderr as ``ts level proc=… pid=… logger: message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(proc))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO is noise for operators.
    for noisy in ("websockets", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
