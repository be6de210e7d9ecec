"""llmfleet operator: turns LLMDeployments into GPU worker fleets."""

from llmfleet_operator._version import __version__

__all__ = ["__version__"]
