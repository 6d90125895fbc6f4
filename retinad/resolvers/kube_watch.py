"""List and watch one Kubernetes resource into handlers: the kubernetes resolver's engine.

``ResourceFollower`` is one resource's life under a Follower (follow.py): list (paginated),
then watch from the list's resourceVersion; resume a watch that ended from the last
resourceVersion seen (within the session, or in the next one after backoff); on 410 Gone
list again and hand the handlers the whole new state, so the resolver can ``replace_all``.

Requests go through the official client's generated ``list_*`` functions (auth, CA
verification, token refresh) with ``_preload_content=False``: the body is parsed as plain
JSON, never into the client's models, and the urllib3 response is kept so that ``stop``
can shut its socket down and unblock a read at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException, ApiTypeError

from retinad.resolvers import kube_workload as kw
from retinad.resolvers.follow import Backoff, Follower

CONNECT_TIMEOUT = 5.0
LIST_READ_TIMEOUT = 60.0
LIST_PAGE_SIZE = 500
WATCH_TIMEOUT_RANGE = (240, 360)
"""Server-side watch timeout, randomised per watch (as client-go does) so that many
agents do not all renew at once."""
WATCH_READ_SLACK = 30.0
"""The client's read timeout is the watch timeout plus this: a silent connection is dead."""
META_LIST_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
)
META_WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json"
OnList = Callable[[list[Mapping[str, Any]]], None]
OnEvent = Callable[[str, Mapping[str, Any]], None]


class ResourceExpired(Exception):
    """410 Gone: the resourceVersion to resume from is older than the API's history."""


class ApiError(Exception):
    """The API answered a request with an error status (or the TLS layer failed)."""


class WatchError(Exception):
    """The watch stream carried an ERROR event other than 410."""


class ResourceFollower:
    """Keeps one resource listed and watched; its handlers update the resolver."""

    def __init__(
        self,
        name: str,
        call: Callable[..., Any],
        *,
        on_list: OnList,
        on_event: OnEvent,
        logger: logging.Logger,
        metadata_only: bool = False,
        backoff: Backoff | None = None,
        watch_timeout: int | None = None,
    ) -> None:
        self.name = name
        self._call = call
        self._on_list = on_list
        self._on_event = on_event
        self._log = logger
        self._metadata_only = metadata_only
        #: kubernetes < 36 (what the deb vendors: packaging/constraints.txt) rejects the
        #: ``_headers`` argument; then the follower asks for whole objects as JSON, which
        #: carry the same metadata (more bytes, same index). Found on first use.
        self._client_takes_headers = True
        self._watch_timeout = watch_timeout
        self._resp: Any = None
        self._resp_lock = threading.Lock()
        self.resource_version: str | None = None
        self.lists = 0
        """Full lists done: the first, then one per 410 Gone (a resumed watch needs none)."""
        self.relists = 0
        """Lists forced by 410 Gone."""
        self.watches = 0
        """Watches established (each renewal and each resume is one)."""
        self.follower = Follower(
            f"kubernetes-{name}",
            self._session,
            logger=logger,
            interrupt=self.interrupt,
            backoff=backoff,
        )

    # --- the session (follower thread) ------------------------------------------------

    def _session(self, f: Follower) -> None:
        try:
            self._follow(f)
        except ApiException as err:  # its str() spans lines and dumps headers: shorten it
            text = _describe(err)
            if err.status == 403:
                text += (
                    " (RBAC: retinad's ServiceAccount needs list and watch on that resource;"
                    " see deploy/kubernetes/rbac.yaml)"
                )
            raise ApiError(text) from err

    def _follow(self, f: Follower) -> None:
        if self.resource_version is None:
            self._list(f)
        while not f.stopping.is_set():
            try:
                self._watch(f)
            except ResourceExpired as err:
                f.mark_down()
                self.resource_version = None
                self.relists += 1
                self._log.info("kubernetes %s: %s; listing again", self.name, err)
                self._list(f)

    def _list(self, f: Follower) -> None:
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": LIST_PAGE_SIZE}
            if token:
                kwargs["_continue"] = token
            resp = self._open(f, (CONNECT_TIMEOUT, LIST_READ_TIMEOUT), kwargs)
            try:
                body = json.loads(resp.read())
            finally:
                self._close(resp)
            page = body.get("items") if isinstance(body, dict) else None
            items.extend(i for i in page or [] if isinstance(i, Mapping))
            meta = kw.metadata(body) if isinstance(body, dict) else {}
            token = meta.get("continue") or None
            if not token:
                break
        rv = meta.get("resourceVersion")
        if not isinstance(rv, str) or not rv:
            raise WatchError(f"the {self.name} list carries no resourceVersion")
        self._on_list(items)
        self.resource_version = rv
        self.lists += 1

    def _watch(self, f: Follower) -> None:
        timeout = self._watch_timeout or random.randint(*WATCH_TIMEOUT_RANGE)
        kwargs = {
            "watch": True,
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout,
        }
        try:
            resp = self._open(f, (CONNECT_TIMEOUT, timeout + WATCH_READ_SLACK), kwargs)
        except ApiException as err:
            if err.status == 410:
                raise ResourceExpired(f"410 Gone: {err.reason}") from err
            raise
        self.watches += 1
        try:
            f.mark_up()
            for line in _lines(resp):
                if f.stopping.is_set():
                    return
                self._handle(line)
        finally:
            self._close(resp)

    def _handle(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self._log.debug("kubernetes %s: undecodable watch line dropped", self.name)
            return
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, Mapping):
            return
        kind = event.get("type")
        if kind == "ERROR":
            code, reason, message = obj.get("code"), obj.get("reason"), obj.get("message")
            if code == 410:
                raise ResourceExpired(f"410 Gone ({reason}: {message})")
            raise WatchError(f"watch ERROR {code} {reason}: {message}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            try:
                self._on_event(kind, obj)
            except Exception:  # one odd object must not stall the stream
                self._log.exception("kubernetes %s: %s event not applied", self.name, kind)
        rv = kw.metadata(obj).get("resourceVersion")
        if isinstance(rv, str) and rv:
            self.resource_version = rv

    # --- requests ---------------------------------------------------------------------

    def _open(self, f: Follower, timeout: tuple[float, float], kwargs: dict[str, Any]) -> Any:
        """Send the request; the urllib3 response is kept so that ``interrupt`` can cut it."""
        accept = "application/json"
        if self._metadata_only:
            accept = META_WATCH_ACCEPT if kwargs.get("watch") else META_LIST_ACCEPT
        resp = None
        if self._client_takes_headers:
            try:
                resp = self._call(
                    _preload_content=False,
                    _request_timeout=timeout,
                    _headers={"Accept": accept},  # a fresh dict: the client adds to it
                    **kwargs,
                )
            except ApiTypeError as err:
                if "_headers" not in str(err):
                    raise
                self._client_takes_headers = False
                self._log.info(
                    "kubernetes %s: this kubernetes client takes no request headers;"
                    " asking for whole objects instead of metadata only",
                    self.name,
                )
        if resp is None:
            resp = self._call(_preload_content=False, _request_timeout=timeout, **kwargs)
        with self._resp_lock:
            self._resp = resp
        if f.stopping.is_set():  # stop() ran before the response could be cut
            self._close(resp)
            raise WatchError("stopping")
        return resp

    def _close(self, resp: Any) -> None:
        with self._resp_lock:
            if self._resp is resp:
                self._resp = None
        try:
            resp.close()
            resp.release_conn()
        except Exception as err:  # already torn down by interrupt()
            self._log.debug("kubernetes %s: closing a response: %s", self.name, err)

    def interrupt(self) -> None:
        """Shut down the socket of the request in flight, so a blocked read returns now."""
        with self._resp_lock:
            resp = self._resp
        conn = getattr(resp, "connection", None)
        sock = getattr(conn, "sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _describe(err: ApiException) -> str:
    """ "HTTP 403 Forbidden: pods is forbidden: ..." from an ApiException, on one line."""
    message = ""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(err.body) if err.body else None
        if isinstance(body, dict):
            message = str(body.get("message") or "")
    text = f"HTTP {err.status} {err.reason}" if err.status else str(err.reason)
    if message:
        text += f": {message}"
    return " ".join(text.split())


def _lines(resp: Any) -> Iterator[bytes]:
    """The newline-delimited JSON events of a watch response, as they arrive."""
    buf = bytearray()
    for chunk in resp.stream(amt=None, decode_content=True):
        buf.extend(chunk)
        while (i := buf.find(b"\n")) >= 0:
            line = bytes(buf[:i])
            del buf[: i + 1]
            if line.strip():
                yield line
