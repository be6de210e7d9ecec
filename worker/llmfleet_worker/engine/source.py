"""Where a model comes from: URI parsing and local checks, without importing torch.

``serve`` checks the URI before the heavy imports, so a typo fails in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["ModelLoadError", "ModelSource", "resolve_uri"]


class ModelLoadError(Exception):
    """The model cannot be served; the message says why and what to change."""


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a local directory or a hub repository."""

    path: str
    revision: str | None = None
    hub: bool = False


def resolve_uri(uri: str) -> ModelSource:
    """``/dir``, ``file:///dir`` or ``hf://org/repo[@revision]`` -> :class:`ModelSource`."""
    if uri.startswith("hf://"):
        repo = uri.removeprefix("hf://").strip("/")
        repo, _, revision = repo.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ModelLoadError(f"hf:// URI must look like hf://ORG/REPO[@REVISION], got {uri!r}")
        return ModelSource(repo, revision or None, hub=True)
    if uri.startswith("file://"):
        path = urlparse(uri).path
    elif "://" in uri:
        raise ModelLoadError(
            f"unsupported model URI scheme in {uri!r}; use a path, file:// or hf://"
        )
    else:
        path = uri
    local = Path(path)
    if not local.is_dir():
        raise ModelLoadError(f"model directory {str(local)!r} does not exist or is not a directory")
    if not (local / "config.json").is_file():
        raise ModelLoadError(f"model directory {str(local)!r} has no config.json")
    return ModelSource(str(local))
