"""The only module that talks to the Kubernetes API server.

Writes use server-side apply with one field manager, so ``kubectl get --show-managed-fields``
says who owns what, re-applying the same object is a no-op, and fields that other writers own
(an HPA, a human with ``kubectl scale``) are not touched unless we declare them.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from llmfleet_operator import metrics
from llmfleet_operator.login import Credentials

FIELD_MANAGER = "llmfleet-operator"

# (apiVersion, kind) -> plural; only the kinds the operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("v1", "Node"): "nodes",
    ("v1", "Secret"): "secrets",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("llmfleet.io/v1alpha1", "LLMDeployment"): "llmdeployments",
}
CLUSTER_SCOPED = {"Node"}
#: The longest watch event line accepted (one object, JSON).
WATCH_MAX_LINE = 16 * 1024 * 1024


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = str(message)


def resource_path(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object."""
    plural = PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace and kind not in CLUSTER_SCOPED:
        base += f"/namespaces/{quote(namespace)}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{quote(name)}"
    if subresource:
        path += f"/{subresource}"
    return path


def object_path(obj: Mapping[str, Any], subresource: str | None = None) -> str:
    """The REST path of ``obj`` from its apiVersion, kind, namespace and name."""
    meta = obj["metadata"]
    return resource_path(
        obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], subresource
    )


class Kube:
    """A small async client: get, list, server-side apply, delete, events."""

    def __init__(
        self,
        credentials: Credentials,
        field_manager: str = FIELD_MANAGER,
        *,
        relogin: Callable[[], Awaitable[Credentials]] | None = None,
    ) -> None:
        self._creds = credentials
        self._relogin = relogin
        self._relogin_lock = asyncio.Lock()
        self.field_manager = field_manager
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._creds.insecure:
            return False
        ctx = ssl.create_default_context(cafile=self._creds.ca_path)
        if self._creds.certificate_path and self._creds.private_key_path:
            ctx.load_cert_chain(self._creds.certificate_path, self._creds.private_key_path)
        return ctx

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                base_url=self._creds.server.rstrip("/") + "/",
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=32),
                timeout=aiohttp.ClientTimeout(total=30),
                # A kubeconfig's proxy-url is the proxy; the environment's are not consulted
                # (client-go's rule when proxy-url is set; none set: HTTPS_PROXY applies).
                trust_env=self._creds.proxy_url is None,
            )
        return self._session

    async def close(self) -> None:
        """Release the connection pool."""
        if self._session is not None:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if authorization := self._creds.authorization:
            headers["Authorization"] = authorization
        return headers

    def _transport(self) -> dict[str, Any]:
        """Per-request options that come from the credentials."""
        options: dict[str, Any] = {}
        if self._creds.proxy_url:
            options["proxy"] = self._creds.proxy_url
        if self._creds.tls_server_name:
            options["server_hostname"] = self._creds.tls_server_name
        return options

    async def _login_again(self, refused: Credentials | None = None) -> bool:
        """Load credentials again (an exec plugin runs); whether they changed.

        ``refused``: the credentials a 401 answered; if another request already replaced
        them, that counts as a change without loading again. Concurrent callers share one
        load.
        """
        if self._relogin is None:
            return False
        async with self._relogin_lock:
            if refused is not None and self._creds != refused:
                return True
            if refused is None and not self._creds.expiring():
                return False
            fresh = await self._relogin()
            changed = fresh != self._creds
            if not fresh.same_transport(self._creds) and self._session is not None:
                await self._session.close()  # new TLS identity: new connections
                self._session = None
            self._creds = fresh
            return changed

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; returns parsed JSON (None for 404 on GET)."""
        url = path.lstrip("/") + (f"?{urlencode(query)}" if query else "")
        if self._creds.expiring():
            await self._login_again()
        for attempt in (1, 2):
            headers = self._headers()
            data = None
            if body is not None:
                headers["Content-Type"] = content_type
                data = json.dumps(body)
            used = self._creds
            session = await self._sess()
            metrics.API_REQUESTS.labels(method=method).inc()
            async with session.request(
                method, url, data=data, headers=headers, **self._transport()
            ) as resp:
                text = await resp.text()
            if resp.status == 401 and attempt == 1 and await self._login_again(used):
                continue
            if resp.status == 404 and method == "GET":
                return None
            if resp.status >= 400:
                raise ApiError(resp.status, method, path, text)
            return json.loads(text) if text else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path`` or None when it does not exist."""
        result: dict[str, Any] | None = await self.request("GET", path)
        return result

    async def list(
        self, path: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a collection (following continue tokens)."""
        items: list[dict[str, Any]] = []
        query: dict[str, str] = {"limit": "500"}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        while True:
            page = await self.request("GET", path, query=query) or {}
            items.extend(page.get("items", []))
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items
            query["continue"] = token

    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The watch events of a collection from ``resource_version`` (bookmarks included),
        one parsed JSON line at a time, until the server ends the watch (``timeout_seconds``).

        An expired ``resource_version`` raises ``ApiError`` 410 (or arrives as an ``ERROR``
        event with a Status object): the caller lists again. Counted as method ``WATCH``.
        """
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if field_selector:
            query["fieldSelector"] = field_selector
        url = path.lstrip("/") + f"?{urlencode(query)}"
        # No total timeout: the stream lives for minutes; silence beyond the server's own
        # timeout (plus a margin) means a dead connection.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30)
        if self._creds.expiring():
            await self._login_again()
        for attempt in (1, 2):
            used = self._creds
            session = await self._sess()
            metrics.API_REQUESTS.labels(method="WATCH").inc()
            async with session.get(
                url, headers=self._headers(), timeout=timeout, **self._transport()
            ) as resp:
                if resp.status == 401 and attempt == 1:
                    await resp.release()
                else:
                    if resp.status >= 400:
                        raise ApiError(resp.status, "WATCH", path, await resp.text())
                    # A Node with many images or a Pod with many containers exceeds the
                    # default line length.
                    while line := await resp.content.readline(max_line_length=WATCH_MAX_LINE):
                        if line.strip():
                            yield json.loads(line)
                    return
            if not await self._login_again(used):
                raise ApiError(401, "WATCH", path, "Unauthorized")

    async def apply(
        self,
        obj: Mapping[str, Any],
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` (force: this manager owns what it declares)."""
        result: dict[str, Any] = await self.request(
            "PATCH",
            object_path(obj, subresource),
            query={"fieldManager": field_manager or self.field_manager, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def delete(self, obj: Mapping[str, Any]) -> bool:
        """Delete ``obj`` (background propagation); False if it was already gone.

        With a uid, only that very object: a namesake created since (someone else's) is left
        alone, as if ours were gone.
        """
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        uid = obj.get("metadata", {}).get("uid")
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", object_path(obj), body=options)
        except ApiError as e:
            if e.status == 404 or (e.status == 409 and uid):
                return False
            raise
        return True

    async def event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        type_: str = "Normal",
    ) -> None:
        """Record a core/v1 Event about ``involved`` (best effort: never fails a reconcile)."""
        meta = involved["metadata"]
        namespace = str(meta.get("namespace", "default"))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        path = resource_path("v1", "Event", namespace)
        try:
            await self.request("POST", path, body=event)
        except (TimeoutError, ApiError, aiohttp.ClientError):
            return
