"""llmfleet_dev.plots: range-query results -> series, and every figure renders to a PNG."""

from __future__ import annotations

import http.server
import json
import math
import random
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llmfleet_dev import plots
from llmfleet_dev.plots import (
    OperatorScale,
    Panel,
    Reaction,
    ReactionRun,
    ReplayTrace,
    Series,
    Span,
    ThroughputRow,
    burst_panels,
    burst_queries,
    is_png,
    series_from_matrix,
)

START = 1_700_000_000.0


def matrix(*series: tuple[dict[str, str], list[tuple[float, str]]]) -> list[dict[str, Any]]:
    """A range query's ``data.result`` as Prometheus sends it (times from START)."""
    return [
        {"metric": labels, "values": [[START + t, v] for t, v in values]}
        for labels, values in series
    ]


def same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y)
        for x, y in zip(a, b, strict=True)
    )


def test_series_from_matrix_relative_times_values_and_labels() -> None:
    result = matrix(
        ({"pod": "w-b", "__name__": "up"}, [(2, "1"), (1, "0.5")]),
        ({"pod": "w-a"}, [(1, "3"), (2, "NaN"), (3, "+Inf")]),
    )
    out = series_from_matrix(result, start=START, label="worker {pod}{missing}")
    assert [s.label for s in out] == ["worker w-a", "worker w-b"]  # sorted; missing -> ""
    assert out[0].t == (1.0, 2.0, 3.0)
    assert out[0].v[0] == 3.0
    assert math.isnan(out[0].v[1])
    assert math.isnan(out[0].v[2])  # infinities cannot be drawn: gaps
    assert out[0].finite == [3.0]
    assert out[1].t == (1.0, 2.0)  # samples sorted by time
    assert out[1].v == (0.5, 1.0)


def test_series_from_matrix_breaks_lines_at_gaps() -> None:
    result = matrix(({}, [(0, "1"), (1, "2"), (5, "3"), (6, "4")]))
    (s,) = series_from_matrix(result, start=START, label=lambda m: "x", step=1.0)
    assert same(s.t, (0.0, 1.0, 3.0, 5.0, 6.0))
    assert same(s.v, (1.0, 2.0, math.nan, 3.0, 4.0))
    (joined,) = series_from_matrix(result, start=START, label="x")  # no step: no gaps
    assert joined.v == (1.0, 2.0, 3.0, 4.0)


def test_series_from_matrix_empty_and_default_label() -> None:
    assert series_from_matrix([], start=START) == []
    (s,) = series_from_matrix(matrix(({"__name__": "up"}, [])), start=START)
    assert (s.label, s.t, s.v) == ("up", (), ())


def test_series_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 times but 1 values"):
        Series("x", (0.0, 1.0), (1.0,))


def test_burst_queries_select_the_one_llmdeployment() -> None:
    queries = burst_queries("ns", "chat", window="15s")
    assert set(queries) == set(plots.BURST_LABELS)
    for key, promql in queries.items():
        assert 'namespace="ns",llmdeployment="chat"' in promql, key
    assert "[15s]" in queries["ttft_p95"]
    assert queries["ttft_p95"].startswith("histogram_quantile(0.95,")
    assert "llmfleet_operator_desired_replicas" in queries["desired"]


def test_burst_panels_from_range_results() -> None:
    results = {
        "in_flight": matrix(({}, [(0, "0"), (1, "12")])),
        "served": matrix(({}, [(0, "0"), (1, "2.5")])),
        "waiting": matrix(({}, [(0, "0"), (1, "7")])),
        "desired": matrix(({}, [(0, "1"), (1, "3")])),
        "ready": matrix(({}, [(0, "1"), (3, "3")])),
        "max": matrix(({}, [(0, "4"), (1, "4")])),
        "ttft_p95": matrix(({}, [(0, "NaN"), (1, "0.4")])),
    }
    panels = burst_panels(results, start=START, target_queue_per_replica=2)
    assert [p.ylabel for p in panels] == [
        "requests",
        "requests/s",
        "requests",
        "replicas",
        "seconds",
    ]
    load, throughput, queue, replicas, ttft = panels
    assert [s.v for s in load.series] == [(0.0, 12.0)]
    assert [s.label for s in throughput.series] == ["completed"]  # "failed": no result
    assert throughput.series[0].v == (0.0, 2.5)
    assert queue.hlines == [(2, "target per replica (2)")]
    assert [s.label for s in queue.series] == ["waiting, all workers"]
    assert replicas.steps
    assert [(s.label, s.dashed) for s in replicas.series] == [
        ("desired", False),
        ("ready", False),
        ("maxReplicas", True),
    ]
    assert same(replicas.series[1].t, (0.0, 1.5, 3.0))  # a 3 s hole at a 1 s step: a gap
    assert ttft.series[0].finite == [0.4]
    assert not burst_panels({}, start=START)[2].hlines  # no target given: no line


def check_png(path: Path) -> None:
    assert is_png(path), path
    assert path.stat().st_size > 5_000  # drawn, not a blank canvas


def synthetic_burst() -> list[Panel]:
    rng = random.Random(1)
    t = tuple(float(x) for x in range(-10, 100))
    load = tuple(0.0 if x < 0 or x > 45 else 4 + rng.random() for x in t)
    waiting = tuple(0.0 if x < 0 or x > 45 else max(0.0, 10 - x / 3) for x in t)
    desired = tuple(1.0 if x < 4 or x > 70 else 4.0 for x in t)
    ready = tuple(1.0 if x < 12 or x > 72 else 4.0 for x in t)
    ttft = tuple(math.nan if x < 0 or x > 46 else 0.2 + waiting[i] / 10 for i, x in enumerate(t))
    return [
        Panel("Offered load", "requests/s", [Series("completed", t, load)]),
        Panel(
            "Queue depth",
            "requests",
            [Series("waiting", t, waiting)],
            hlines=[(2, "target")],
            integer=True,
        ),
        Panel(
            "Replicas",
            "replicas",
            [
                Series("desired", t, desired),
                Series("ready", t, ready),
                Series("max", t, tuple(4.0 for _ in t), dashed=True),
            ],
            steps=True,
            integer=True,
        ),
        Panel("TTFT p95", "seconds", [Series("TTFT p95", t, ttft)]),
        Panel("Nothing", "x", [], empty_note="no samples here"),
    ]


def test_render_timeseries_writes_a_png(tmp_path: Path) -> None:
    out = plots.render_timeseries(
        synthetic_burst(),
        tmp_path / "sub" / "burst.png",
        title="a burst",
        xlabel="seconds since the burst began",
        spans=[Span(0, 45, "12 clients")],
    )
    assert out == tmp_path / "sub" / "burst.png"
    check_png(out)


def test_render_timeseries_needs_panels(tmp_path: Path) -> None:
    with pytest.raises(plots.PlotError):
        plots.render_timeseries([], tmp_path / "x.png", title="none")
    assert not (tmp_path / "x.png").exists()


def test_render_throughput_writes_a_png(tmp_path: Path) -> None:
    rows = [ThroughputRow("naive generate (sequential)", 1, 40.0, 0.05, 0.06)]
    rows += [ThroughputRow("static batch generate", c, 40.0 * c**0.8) for c in (8, 32)]
    for name, scale in (("llmfleet worker (HTTP)", 1.0), ("transformers serve", 0.6)):
        rows += [
            ThroughputRow(name, c, 38.0 * c**0.7 * scale, 0.03 * c**0.5, 0.05 * c**0.6)
            for c in (1, 8, 32)
        ]
    check_png(plots.render_throughput(rows, tmp_path / "throughput.png", title="worker"))
    one = [ThroughputRow("llmfleet worker (HTTP)", 4, 100.0, 0.1, 0.2)]
    check_png(plots.render_throughput(one, tmp_path / "one.png", title="one level"))
    with pytest.raises(plots.PlotError):
        plots.render_throughput([], tmp_path / "none.png", title="none")


def reaction(runs: list[ReactionRun]) -> Reaction:
    t = [i * 15.0 for i in range(240)]
    load = [60.0 if 600 <= x < 1500 else 3.0 for x in t]
    replicas = [1 if x < 615 or x > 1800 else 15 for x in t]
    return Reaction(runs, 5.0, ReplayTrace(t, load, replicas, flaps=0), [0] * 49 + [1])


def test_render_reaction_writes_a_png(tmp_path: Path) -> None:
    runs = [ReactionRun(2.1, 3.4, 9.8, 4), ReactionRun(1.8, 3.0, 8.7, 3)]
    check_png(plots.render_reaction(reaction(runs), tmp_path / "live.png", title="reaction"))
    # --replay-only: no live runs, and no flaps at all
    replay_only = Reaction([], 5.0, reaction([]).burst, [0] * 10)
    check_png(plots.render_reaction(replay_only, tmp_path / "replay.png", title="replay"))


def test_render_operator_scale_writes_a_png(tmp_path: Path) -> None:
    rng = random.Random(2)
    data = OperatorScale(
        count=200,
        latencies={
            "create -> Deployment applied": [rng.uniform(0.1, 3) for _ in range(200)],
            "create -> first status": [rng.uniform(0.2, 4) for _ in range(200)],
            "apply -> Ready": [rng.uniform(2, 20) for _ in range(200)],
            "empty": [],
        },
        requests_converge={"get": 12, "patch": 400, "patch/status": 600, "create": 200},
        requests_idle={"get": 2},
        idle_seconds=60,
    )
    check_png(plots.render_operator_scale(data, tmp_path / "scale.png", title="scale"))


def test_is_png(tmp_path: Path) -> None:
    assert not is_png(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert not is_png(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not a picture at all")
    assert not is_png(tmp_path / "text.png")


def test_render_burst_from_the_saved_json(tmp_path: Path) -> None:
    """What `make demo` saves as burst.json draws again (python -m llmfleet_dev.plots IN OUT)."""
    results = {
        key: matrix(({}, [(t, str(float(t % 5))) for t in range(-15, 80)]))
        for key in burst_queries("ns", "chat")
    }
    results["ttft_p95"] = matrix(({}, [(t, "NaN" if t > 50 else "0.7") for t in range(-15, 80)]))
    burst = {
        "start": START,
        "burst_end": START + 45,
        "step": 1.0,
        "clients": 12,
        "target_queue_per_replica": 2,
        "title": "a saved burst",
        "results": results,
    }
    saved = tmp_path / "burst.json"
    saved.write_text(json.dumps(burst))
    assert plots.main([str(saved), str(tmp_path / "again.png")]) == 0
    check_png(tmp_path / "again.png")


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    """Answers /api/v1/query_range like Prometheus: a matrix, or a 400 with an error."""

    seen: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query)
        self.seen.append(params)
        if params["query"] == ["bad("]:
            code, body = 400, {"status": "error", "errorType": "bad_data", "error": "parse error"}
        elif params["query"] == ["scalar(1)"]:
            code, body = 200, {"status": "success", "data": {"resultType": "scalar", "result": []}}
        else:
            result = [{"metric": {"pod": "w"}, "values": [[float(params["start"][0]), "1"]]}]
            code, body = (
                200,
                {"status": "success", "data": {"resultType": "matrix", "result": result}},
            )
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_prometheus() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_query_range(fake_prometheus: str) -> None:
    result = plots.query_range(fake_prometheus, "up", START, START + 60, 1.0)
    assert result == [{"metric": {"pod": "w"}, "values": [[START, "1"]]}]
    params = FakePrometheus.seen[-1]
    assert params["start"] == [f"{START:.3f}"]
    assert params["end"] == [f"{START + 60:.3f}"]
    assert params["step"] == ["1"]
    with pytest.raises(plots.PlotError, match="parse error"):
        plots.query_range(fake_prometheus, "bad(", START, START + 60, 1.0)
    with pytest.raises(plots.PlotError, match="result type scalar"):
        plots.query_range(fake_prometheus, "scalar(1)", START, START + 60, 1.0)


def test_query_range_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(plots.PlotError, match="query_range"):
            plots.query_range(f"http://127.0.0.1:{port}", "up", START, START + 1, 1.0, timeout=2)
