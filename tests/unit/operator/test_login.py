"""Credentials load as kubectl loads them (exec plugins, contexts, proxies), and the client
logs in again when they expire or are refused, once for many concurrent requests."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmfleet_operator import login
from llmfleet_operator.k8s import ApiError, Kube

PLUGIN = """\
import json, sys
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": sys.argv[1], "expirationTimestamp": "2031-05-04T03:02:01Z"},
}))
"""


def kubeconfig(tmp_path: Path, users: dict[str, dict[str, Any]]) -> Path:
    """A kubeconfig with one context per user; cluster ``a`` has a proxy, ``b`` does not."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": next(iter(users)),
        "clusters": [
            {
                "name": "a",
                "cluster": {
                    "server": "https://a.example:6443",
                    "insecure-skip-tls-verify": True,
                    "proxy-url": "http://proxy.example:3128",
                },
            },
            {"name": "b", "cluster": {"server": "http://127.0.0.1:8080"}},
        ],
        "contexts": [
            {"name": name, "context": {"cluster": "a" if i == 0 else "b", "user": name}}
            for i, name in enumerate(users)
        ],
        "users": [{"name": name, "user": user} for name, user in users.items()],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


async def test_an_exec_plugin_gives_the_token_and_its_expiry(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN)
    exec_user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), "from-the-plugin"],
        }
    }
    path = kubeconfig(tmp_path, {"cloud": exec_user, "local": {"token": "static"}})
    creds = await login.load(login.Source(kubeconfig=str(path)))
    assert creds.server == "https://a.example:6443"
    assert creds.authorization == "Bearer from-the-plugin"
    assert creds.expires == datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert creds.proxy_url == "http://proxy.example:3128"
    assert creds.insecure
    other = await login.load(login.Source(kubeconfig=str(path), context="local"))
    assert (other.server, other.authorization, other.expires) == (
        "http://127.0.0.1:8080",
        "Bearer static",
        None,
    )


async def test_no_configuration_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(login.LoginError, match="cannot load Kubernetes credentials"):
        await login.load(login.Source(kubeconfig=str(tmp_path / "missing")))


class Server:
    """An HTTP endpoint that accepts only the token in ``valid`` (a stand-in for the API
    server's authentication; what the client does is under test)."""

    def __init__(self) -> None:
        self.valid = "new"
        self.seen: list[str] = []
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/pods", self.pods)
        self.server = TestServer(app)

    async def pods(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "")
        self.seen.append(token)
        if token != f"Bearer {self.valid}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if request.query.get("watch"):
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b'{"type": "ADDED", "object": {}}\n')
            return resp
        return web.json_response({"items": [{"metadata": {"name": "p"}}]})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.server.start_server()
    try:
        yield s
    finally:
        await s.server.close()


class Logins:
    """A relogin callback handing out the next credentials, counting its calls."""

    def __init__(self, fresh: login.Credentials) -> None:
        self.fresh = fresh
        self.calls = 0

    async def __call__(self) -> login.Credentials:
        self.calls += 1
        await asyncio.sleep(0.01)  # an exec plugin takes a while: callers overlap
        return self.fresh


def creds_for(server: Server, token: str, **changes: Any) -> login.Credentials:
    url = str(server.server.make_url("/"))
    return replace(login.Credentials(server=url, token=token), **changes)


async def test_a_refused_token_is_replaced_once_for_concurrent_requests(server: Server) -> None:
    logins = Logins(creds_for(server, "new"))
    kube = Kube(creds_for(server, "old"), relogin=logins)
    try:
        lists = await asyncio.gather(
            *(kube.list("/api/v1/namespaces/default/pods") for _ in range(5))
        )
        assert all(len(items) == 1 for items in lists)
        assert logins.calls == 1
        assert server.seen.count("Bearer new") == 5
    finally:
        await kube.close()


async def test_expiring_credentials_are_replaced_before_the_request(server: Server) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    logins = Logins(creds_for(server, "new"))
    kube = Kube(creds_for(server, "old", expires=soon), relogin=logins)
    try:
        await kube.list("/api/v1/namespaces/default/pods")
        assert server.seen == ["Bearer new"]
        assert logins.calls == 1
    finally:
        await kube.close()


async def test_credentials_refused_again_are_an_error(server: Server) -> None:
    server.valid = "something-else"
    logins = Logins(creds_for(server, "old"))
    kube = Kube(creds_for(server, "old"), relogin=logins)
    try:
        with pytest.raises(ApiError) as refused:
            await kube.list("/api/v1/namespaces/default/pods")
        assert refused.value.status == 401
        assert logins.calls == 1
    finally:
        await kube.close()


async def test_a_watch_refused_logs_in_again_and_streams(server: Server) -> None:
    logins = Logins(creds_for(server, "new"))
    kube = Kube(creds_for(server, "old"), relogin=logins)
    try:
        events = [e async for e in kube.watch("/api/v1/namespaces/default/pods", "1")]
        assert events == [{"type": "ADDED", "object": {}}]
        assert server.seen == ["Bearer old", "Bearer new"]
    finally:
        await kube.close()
