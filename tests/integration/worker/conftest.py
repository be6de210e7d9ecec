"""Fixtures: the tiny model (built once per session) and a shared worker process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_procs import API_KEY, WORKER, WorkerProcess, start_worker


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-architecture tiny model, built offline with the CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    subprocess.run([WORKER, "make-tiny-model", str(out), "--seed", "0"], check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def worker(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One shared worker with an API key (from the environment, as a Secret would set it)."""
    w = start_worker(
        tiny_model,
        tmp_path_factory.mktemp("worker"),
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "8",
        "--max-request-bytes",
        str(8 * 1024 * 1024),
        api_key=API_KEY,
    )
    yield w
    w.stop()
