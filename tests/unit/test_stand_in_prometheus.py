"""The stand-in Prometheus served from a thread, for synchronous callers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from llmfleet_dev.stand_in_prometheus import by_query, stand_in_prometheus_thread


def query(url: str, q: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': q})}") as r:
        result: dict[str, Any] = json.load(r)
        return result


def test_a_synchronous_caller_is_answered_and_the_server_stops_with_the_block() -> None:
    answer = by_query({"up": lambda: [{"metric": {"job": "w"}, "value": [0, "1"]}]})
    with stand_in_prometheus_thread(answer, clock=lambda: 1234.5) as stand_in:
        body = query(stand_in.url, "up")
        assert body["data"]["result"] == [{"metric": {"job": "w"}, "value": [1234.5, "1"]}]
        with pytest.raises(urllib.error.HTTPError) as refused:
            query(stand_in.url, "down")
        assert refused.value.code == 400
        refused.value.close()
        assert stand_in.seen == ["up", "down"]
    with pytest.raises(urllib.error.URLError):
        query(stand_in.url, "up")
