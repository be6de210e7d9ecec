"""The pod backer's API client: the operator's own :class:`~llmfleet_operator.k8s.Kube`,
logged in from a kubeconfig exactly as the operator (and kubectl) would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmfleet_operator import login
from llmfleet_operator.k8s import ApiError, Kube


class KubeClient:
    """The operator's own client, logged in from the kubeconfig exactly as the operator (and
    kubectl) would: the list and patch calls the backer makes."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    @classmethod
    async def connect(cls, kubeconfig: Path) -> KubeClient:
        source = login.Source(kubeconfig=str(kubeconfig))
        return cls(Kube(await login.load(source), relogin=lambda: login.load(source)))

    async def list(self, path: str) -> list[dict[str, Any]] | None:
        """The items of a list call; None when the resource does not exist (404)."""
        page = await self.kube.request("GET", path)
        return None if page is None else list(page.get("items") or [])

    async def patch(
        self,
        path: str,
        body: dict[str, Any],
        content_type: str = "application/strategic-merge-patch+json",
    ) -> dict[str, Any] | None:
        """PATCH ``path`` (a pod's ``.../status``, say); the updated object, None on 404."""
        try:
            obj: dict[str, Any] = await self.kube.request(
                "PATCH", path, body=body, content_type=content_type
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return obj

    async def close(self) -> None:
        await self.kube.close()
