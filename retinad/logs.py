"""Logging set-up: levels and logfmt or JSON lines on stderr (journald adds timestamps,
but we keep ours so logs read the same outside systemd)."""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
}


def _ts(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _level(record: logging.LogRecord) -> str:
    return _NAMES.get(record.levelno, "error" if record.levelno > logging.ERROR else "debug")


def _logfmt_value(v: str) -> str:
    if v and not any(c in v for c in ' ="\\\n') and v.isprintable():
        return v
    return json.dumps(v, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        parts = [
            f"ts={_ts(record)}",
            f"level={_level(record)}",
            f"logger={record.name}",
            f"msg={_logfmt_value(msg)}",
        ]
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _ts(record), "level": _level(record), "logger": record.name}
        doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> logging.Logger:
    """Configure the ``retinad`` logger tree (idempotent: replaces its handler on reload)."""
    logger = logging.getLogger("retinad")
    logger.setLevel(LEVELS[level])
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.addHandler(handler)
    return logger
