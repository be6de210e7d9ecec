"""OpenAI-compatible protocol models and the thin HTTP routes."""
