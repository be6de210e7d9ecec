"""Where the API server is and who the operator is to it.

The official client's loaders read the configuration, so the operator authenticates exactly as
``kubectl`` does with the same kubeconfig: its contexts, exec credential plugins (EKS, GKE, AKS
and OIDC helpers), token files, client certificates and proxies; or the pod's service account.
kopf's watches and our own client take their credentials from here, so both are the same
user. Credentials that expire (exec tokens, the rotating service-account token) carry their
expiry and are loaded again before it, or when the API server answers 401.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import (
    ConfigException,
    load_incluster_config,
    load_kube_config,
)

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: How long a service-account token read from its file is used before reading it again
#: (client-go's period: the kubelet rotates the projected token well before it expires).
SERVICE_ACCOUNT_TOKEN_PERIOD = timedelta(minutes=1)
#: Credentials this close to their expiry are loaded again before the next request.
EXPIRY_MARGIN = timedelta(seconds=10)


class LoginError(Exception):
    """No usable configuration: neither a kubeconfig nor an in-cluster service account."""


@dataclass(frozen=True)
class Source:
    """Which configuration to load; the defaults do what kubectl and controller-runtime do."""

    #: A kubeconfig path, or several joined by ``os.pathsep``; empty: ``$KUBECONFIG``, else
    #: in-cluster when running in a pod, else ``~/.kube/config``.
    kubeconfig: str = ""
    #: A context of that kubeconfig; empty: its current-context.
    context: str = ""


@dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to the API server."""

    server: str
    ca_path: str | None = None
    insecure: bool = False
    #: The Authorization header's scheme and credentials (``Bearer`` token, ``Basic``).
    scheme: str | None = None
    token: str | None = None
    certificate_path: str | None = None
    private_key_path: str | None = None
    proxy_url: str | None = None
    tls_server_name: str | None = None
    #: When these credentials stop being valid; None: until the API server refuses them.
    expires: datetime | None = None

    @property
    def authorization(self) -> str | None:
        """The value of the Authorization header, if any."""
        if not self.token:
            return None
        return f"{self.scheme or 'Bearer'} {self.token}"

    def expiring(self, now: datetime | None = None) -> bool:
        """Whether to load again before the next request."""
        if self.expires is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires - EXPIRY_MARGIN

    def same_transport(self, other: Credentials) -> bool:
        """Whether ``other`` can reuse this one's connections (same server and TLS identity)."""
        return (
            self.server,
            self.ca_path,
            self.insecure,
            self.certificate_path,
            self.private_key_path,
            self.proxy_url,
            self.tls_server_name,
        ) == (
            other.server,
            other.ca_path,
            other.insecure,
            other.certificate_path,
            other.private_key_path,
            other.proxy_url,
            other.tls_server_name,
        )


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and SERVICE_ACCOUNT_TOKEN.exists()


async def load(source: Source = Source()) -> Credentials:
    """Credentials from ``source``; raises LoginError when there are none.

    An exec plugin runs here (again each time its credentials near their expiry): call this
    when they do, not once per request.
    """
    config = Configuration()
    kubeconfig = source.kubeconfig or os.environ.get("KUBECONFIG", "")
    expires: datetime | None = None
    try:
        if not kubeconfig and not source.context and _in_cluster():
            load_incluster_config(client_configuration=config, try_refresh_token=False)  # type: ignore[no-untyped-call]
            expires = datetime.now(UTC) + SERVICE_ACCOUNT_TOKEN_PERIOD
        else:
            loader = await load_kube_config(
                config_file=kubeconfig or None,
                context=source.context or None,
                client_configuration=config,
                persist_config=False,  # never rewrite the user's kubeconfig
            )
            expiry = getattr(loader, "exec_plugin_expiry", None)
            if isinstance(expiry, datetime):
                expires = expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)
    except (ConfigException, OSError, KeyError, TypeError, ValueError) as e:
        where = kubeconfig or "~/.kube/config (no in-cluster service account either)"
        raise LoginError(f"cannot load Kubernetes credentials from {where}: {e}") from e
    header = config.api_key.get("BearerToken") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("Bearer", "", header)
    if not config.host:
        raise LoginError("the Kubernetes configuration names no API server")
    return Credentials(
        server=str(config.host),
        ca_path=config.ssl_ca_cert or None,
        insecure=not config.verify_ssl,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=config.cert_file or None,
        private_key_path=config.key_file or None,
        proxy_url=config.proxy or None,
        tls_server_name=getattr(config, "tls_server_name", None) or None,
        expires=expires,
    )
