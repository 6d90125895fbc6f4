"""Re-reading the web config when its files change, keeping the last good one."""

from __future__ import annotations

import logging
import os
import threading
import time

from retinad.errors import WebConfigError
from retinad.exporter.webconfig_model import WebConfig
from retinad.exporter.webconfig_parse import load_web_config

_RACY_SECONDS = 2.0
"""A file modified this close to when it was read may change again within the same
timestamp tick, so its contents (not only its stat) are compared on the next check."""

_Signature = tuple[tuple[str, int, int, int, int], ...]


class WebConfigWatcher:
    """Hands out the current web config, re-reading it when its files change.

    Every request calls ``current()``: one ``stat`` per file (the YAML plus the
    certificate, key and CA it names) when nothing changed. A config that became invalid
    is logged once per change and the last good one stays in force. Whether TLS is on is
    fixed by the first config, as in exporter-toolkit: a change that would turn it on or
    off is refused the same way.
    """

    def __init__(self, path: str, *, logger: logging.Logger) -> None:
        self._path, self._logger = path, logger
        self._lock = threading.Lock()
        self._config = load_web_config(path)
        self._tls = self._config.tls is not None
        self._paths: tuple[str, ...] = (path, *self._config.files) if path else ()
        self._sig = _stat(self._paths)
        self._contents = _contents(self._paths)
        self._checked_at = time.time()
        self._bad_contents: tuple[bytes, ...] | None = None

    @property
    def tls(self) -> bool:
        """Whether this server speaks TLS (fixed at start)."""
        return self._tls

    def current(self) -> WebConfig:
        """The config in force now; never raises."""
        if not self._path:
            return self._config
        with self._lock:
            sig = _stat(self._paths)
            if sig == self._sig and not self._racy():
                return self._config
            contents = _contents(self._paths)
            if contents == self._contents:  # touched, or checked again in the racy window
                self._sig, self._checked_at = sig, time.time()
            elif contents != self._bad_contents:
                self._reload(contents)
            return self._config

    def _racy(self) -> bool:
        """Whether a file was modified so close to the last check that a later write in
        the same timestamp tick would leave its stat unchanged (git's "racily clean")."""
        newest = max((max(m, c) for _, _, _, m, c in self._sig), default=0) / 1e9
        return self._checked_at - newest <= _RACY_SECONDS

    def _reload(self, contents: tuple[bytes, ...]) -> None:
        if not os.path.exists(self._path):
            self._bad_contents = contents
            self._logger.warning(
                "web config %s was deleted; the last one read stays in force (restore the "
                "file, or remove [web].config_file and reload, to change it)",
                self._path,
            )
            return
        try:
            config = load_web_config(self._path)
            if (config.tls is not None) != self._tls:
                state = "on" if self._tls else "off"
                raise WebConfigError(
                    f"{self._path}: tls_server_config: TLS was {state} at start; turning it "
                    "on or off needs a restart"
                )
        except WebConfigError as err:
            self._bad_contents = contents
            self._logger.error("web config not reloaded, keeping the previous one: %s", err)
            return
        self._config, self._bad_contents = config, None
        self._paths = (self._path, *config.files)
        self._sig = _stat(self._paths)
        self._contents = _contents(self._paths)
        self._checked_at = time.time()
        self._logger.info("web config reloaded from %s", self._path)


def _stat(paths: tuple[str, ...]) -> _Signature:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((p, -1, -1, -1, -1))
        else:
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def _contents(paths: tuple[str, ...]) -> tuple[bytes, ...]:
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                out.append(f.read())
        except OSError:
            out.append(b"")
    return tuple(out)
