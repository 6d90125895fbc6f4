"""Where flow records go as JSON lines: a size-rotated file, or standard output.

The file side is the standard library's ``logging.handlers.RotatingFileHandler``, used as
a writer and not through a logger (so no level, format or propagation applies): it rolls
over before a line that would take the file past ``max_bytes``, renaming path -> path.1 ->
path.2 ... as Fluent Bit, Vector and Promtail expect of a rotated file, and a line is
written whole to exactly one file. Only the writer thread calls ``write``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable
from typing import Any, Protocol, TextIO


class RecordSink(Protocol):
    def write(self, records: Iterable[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class RotatingJsonLog:
    """JSON lines into ``path``, rotated at ``max_bytes`` keeping ``backups`` old files.

    The handler's own per-record path (a LogRecord, two stat() calls and a tell() per
    line) cost more than the rest of a record together, so lines go straight to its
    stream and the size is tracked here; the rotation itself is the handler's
    ``doRollover`` (renames, reopen)."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        # Flow records name hosts and containers: readable by root and its group only.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640))
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._max = max_bytes
        self._regular = os.path.isfile(path)  # /dev/null and pipes never rotate
        self._size = os.path.getsize(path) if self._regular else 0

    def _stream(self) -> TextIO:
        stream = self._handler.stream
        if stream is None:  # only with delay=True, which is not used
            raise OSError(f"{self._handler.baseFilename}: not open")
        return stream

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        h = self._handler
        stream = self._stream()
        for record in records:
            data = json_line(record) + "\n"
            n = len(data.encode())
            if self._regular and self._size and self._size + n > self._max:
                h.doRollover()  # reopens h.stream
                stream = self._stream()
                self._size = 0
            stream.write(data)
            self._size += n
        stream.flush()

    def close(self) -> None:
        self._handler.close()


class StdoutJsonLog:
    """JSON lines on standard output (the journal, under systemd)."""

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        out = sys.stdout
        for record in records:
            out.write(json_line(record) + "\n")
        out.flush()

    def close(self) -> None:
        pass


def open_sink(path: str, max_size_mib: int, max_files: int) -> RecordSink | None:
    """The sink ``[packetparser.events.log]`` asks for, or None for no flow log."""
    if not path:
        return None
    if path == "-":
        return StdoutJsonLog()
    return RotatingJsonLog(path, max_size_mib * 1024 * 1024, max_files)
