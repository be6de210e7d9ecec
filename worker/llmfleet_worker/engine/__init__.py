"""Continuous batching engine: a pure-Python scheduler and loop, a torch model runner."""
