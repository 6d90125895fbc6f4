"""List and watch GETs to the Kubernetes API, without the client's generated API classes.

Why: the kubernetes client imports each generated ``*Api`` class lazily, on first use, and
they are large: ``CoreV1Api`` alone costs 21.6 MiB resident (every method's parameters
are pydantic-annotated, with their API docs as strings), ``AppsV1Api`` 4.1 MiB more. The
resolver uses none of what they add (models, validation): it asks for raw JSON
(``_preload_content=False``) from four list endpoints. So it keeps what the client is good
at (kubeconfig and in-cluster config, CA and client certificates, the token and its
refresh hook, the urllib3 pool built from them: ``ApiClient``) and sends the GET itself
through that pool, as the generated functions do. Measured in docs/PERFORMANCE.md.

The response is urllib3's, unread, as the generated functions return it with
``_preload_content=False``; a status outside 2xx is read and raised as the client's own
``ApiException`` (status, reason, body), so callers handle errors as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes.client.exceptions import ApiException

QUERY_NAMES = {
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
}
"""The generated functions' keyword arguments the resolver uses -> the API's query names."""


def lister(api: Any, path: str, **fixed: Any) -> Callable[..., Any]:
    """A callable like the generated ``list_*`` functions for ``path`` (e.g.
    ``/api/v1/pods``), with ``fixed`` query arguments (e.g. a field selector)."""

    def call(
        *,
        _preload_content: bool = False,
        _request_timeout: float | tuple[float, float] | None = None,
        _headers: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Any:
        assert not _preload_content, "raw responses only: bodies are parsed by the caller"
        return get(api, path, {**fixed, **params}, headers=_headers, timeout=_request_timeout)

    return call


def get(
    api: Any,
    path: str,
    params: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | tuple[float, float] | None = None,
) -> Any:
    """GET ``path`` with ``params`` through ``api``'s pool; the unread urllib3 response."""
    cfg = api.configuration
    query = [
        (QUERY_NAMES[name], str(value).lower() if isinstance(value, bool) else str(value))
        for name, value in params.items()
        if value is not None
    ]
    url = cfg.host.rstrip("/") + path + ("?" + urlencode(query) if query else "")
    sent = {**api.default_headers, "Accept": "application/json", **(headers or {})}
    sent["User-Agent"] = api.user_agent
    for auth in cfg.auth_settings().values():  # the bearer token, refreshed by its hook
        if auth.get("in") == "header" and auth.get("value"):
            sent[auth["key"]] = auth["value"]
    if isinstance(timeout, tuple):
        limit: urllib3.Timeout | None = urllib3.Timeout(connect=timeout[0], read=timeout[1])
    else:
        limit = urllib3.Timeout(total=timeout) if timeout else None
    resp = api.rest_client.pool_manager.request(
        "GET", url, headers=sent, timeout=limit, preload_content=False
    )
    if not 200 <= resp.status <= 299:
        try:
            body = resp.read().decode("utf-8", errors="replace")
        finally:
            resp.release_conn()
        err = ApiException(status=resp.status, reason=resp.reason)
        err.body = body  # not a keyword before client 33
        raise err
    return resp
