"""llmfleet worker: an OpenAI-compatible PyTorch/transformers inference server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmfleet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
