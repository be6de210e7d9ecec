"""PNG figures for ``make demo`` and the benchmarks in ``bench/`` (matplotlib, Agg backend).

Two halves:

* pure data: :func:`series_from_matrix` turns the ``data.result`` of a Prometheus range query
  (``/api/v1/query_range``, result type ``matrix``) into :class:`Series` of seconds and
  values; :func:`query_range` asks a Prometheus for one;
* figures: :func:`render_timeseries` draws stacked panels over one shared time axis (the
  demo's burst), :func:`render_throughput`, :func:`render_reaction` and
  :func:`render_operator_scale` draw what the benchmarks print.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through
``pyplot``: no display, no global backend state, safe beside threads.

Part of :mod:`llmfleet_dev`: the tests, ``hack/demo.py`` and ``bench/`` import it as
``llmfleet_dev.plots`` (the development venv's editable install puts ``dev/`` on the path).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

#: The ``data.result`` of a range query: ``[{"metric": {...}, "values": [[ts, "1"], ...]}]``.
Matrix = Sequence[Mapping[str, Any]]
DPI = 110
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PlotError(RuntimeError):
    """A range query failed, or there was nothing to draw."""


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One line: ``t`` in seconds (from the figure's origin), ``v`` its values (nan: a gap)."""

    label: str
    t: tuple[float, ...]
    v: tuple[float, ...]
    #: A reference (a limit such as maxReplicas): drawn thin, dashed, grey.
    dashed: bool = False
    #: Drawn wide and pale, under the others: a line that another may cover (desired under
    #: ready replicas, the fleet's queue under the per-worker queue) stays visible.
    wide: bool = False

    def __post_init__(self) -> None:
        if len(self.t) != len(self.v):
            raise ValueError(f"{self.label}: {len(self.t)} times but {len(self.v)} values")

    @property
    def finite(self) -> list[float]:
        return [x for x in self.v if math.isfinite(x)]


class _Labels(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _number(text: Any) -> float:
    """A sample value as Prometheus writes it ("1.5", "NaN", "+Inf"); infinities -> nan."""
    value = float(text)
    return value if math.isfinite(value) else math.nan


def series_from_matrix(
    result: Matrix,
    *,
    start: float,
    label: str | Callable[[Mapping[str, str]], str] = "{__name__}",
    step: float | None = None,
) -> list[Series]:
    """The series of a range query's ``data.result``, sorted by label.

    ``start``: the Unix time that becomes t = 0. ``label``: a format string over the series'
    labels (missing labels format as "") or a function of them. ``step``: the query's step;
    where consecutive samples are more than 1.5 steps apart (the series was absent, e.g. a
    histogram quantile with no requests, or a worker not yet scraped) a nan is inserted so
    the line breaks instead of bridging the gap.
    """
    out = []
    for item in result:
        metric = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        name = label(metric) if callable(label) else label.format_map(_Labels(metric))
        t: list[float] = []
        v: list[float] = []
        for ts, value in sorted(item.get("values") or [], key=lambda p: float(p[0])):
            at = float(ts) - start
            if step is not None and t and at - t[-1] > 1.5 * step:
                t.append((t[-1] + at) / 2)
                v.append(math.nan)
            t.append(at)
            v.append(_number(value))
        out.append(Series(name, tuple(t), tuple(v)))
    return sorted(out, key=lambda s: s.label)


def query_range(
    url: str, promql: str, start: float, end: float, step: float, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """``GET /api/v1/query_range`` of the Prometheus at ``url``; returns ``data.result``."""
    params = urllib.parse.urlencode(
        {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    try:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=timeout) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # a 4xx/5xx answer still explains itself in JSON
            with e:
                body = json.loads(e.read() or b"{}")
    except (OSError, ValueError) as e:
        raise PlotError(f"query_range {promql!r}: {e}") from e
    if body.get("status") != "success":
        raise PlotError(f"query_range {promql!r}: {body.get('error', body)}")
    if body["data"].get("resultType") != "matrix":
        raise PlotError(f"query_range {promql!r}: result type {body['data'].get('resultType')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


# --- figures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One subplot of :func:`render_timeseries`."""

    title: str
    ylabel: str
    series: Sequence[Series]
    #: Draw as steps (counts that change at an instant, such as replicas), not lines.
    steps: bool = False
    #: Horizontal reference lines: (value, legend label).
    hlines: Sequence[tuple[float, str]] = ()
    #: Integer ticks on the y axis (counts).
    integer: bool = False
    #: Shown in the panel when it has no finite value at all.
    empty_note: str = "no samples"


@dataclass(frozen=True)
class Span:
    """A shaded stretch of the time axis (on every panel), labelled on the first."""

    start: float
    end: float
    label: str
    color: str = "tab:orange"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _legend(ax: Axes, handles: Sequence[Any] | None = None, x: float = 1.01) -> None:
    """The legend outside the axes, on the right (from ``x`` axes widths), so it never hides
    a line."""
    if handles is None:
        handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(x, 1.0),
            fontsize="small",
            frameon=False,
        )


def render_timeseries(
    panels: Sequence[Panel],
    path: Path | str,
    *,
    title: str,
    xlabel: str = "seconds",
    spans: Sequence[Span] = (),
    width: float = 12.0,
    panel_height: float = 2.0,
) -> Path:
    """Stacked panels sharing one time axis, written as a PNG; returns the path."""
    if not panels:
        raise PlotError("no panels to draw")
    fig = _new_figure(width, 0.8 + panel_height * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(title, fontweight="bold")
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        for span in spans:
            ax.axvspan(
                span.start,
                span.end,
                color=span.color,
                alpha=0.12,
                lw=0,
                label=span.label if i == 0 else None,
            )
        for s in panel.series:
            style: dict[str, Any] = {"label": s.label, "lw": 2 if panel.steps else 1.6}
            if s.dashed:
                style |= {"ls": "--", "lw": 1, "color": "grey"}
            if s.wide:
                style |= {"lw": 4.5, "alpha": 0.45, "zorder": 1.5}
            if panel.steps:
                ax.step(s.t, s.v, where="post", **style)
            else:
                ax.plot(s.t, s.v, **style)
        for value, label in panel.hlines:
            ax.axhline(value, ls=":", lw=1.2, color="black", label=label)
        ax.set_title(panel.title, loc="left", fontsize="medium")
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        if panel.integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if not any(s.finite for s in panel.series):
            ax.text(0.5, 0.5, panel.empty_note, transform=ax.transAxes, ha="center", va="center")
        _legend(ax)
    axes[-1].set_xlabel(xlabel)
    return _save(fig, path)


#: Range queries are evaluated every this many seconds (the demo scrapes every second).
BURST_STEP = 1.0
#: The rate window of the burst's per-second rates and quantiles (a few scrapes).
BURST_RATE_WINDOW = "10s"


def burst_queries(namespace: str, name: str, window: str = BURST_RATE_WINDOW) -> dict[str, str]:
    """PromQL for each line of the burst figure: worker metrics (scraped from the real
    workers) and the operator's own ``llmfleet_operator_*`` gauges for one LLMDeployment."""
    sel = f'namespace="{namespace}",llmdeployment="{name}"'
    total = "llmfleet_worker_requests_total"
    waiting = f"llmfleet_worker_requests_waiting{{{sel}}}"
    return {
        "in_flight": f'sum({{__name__=~"llmfleet_worker_requests_(running|waiting)",{sel}}})',
        "served": f'sum(rate({total}{{{sel},outcome="success"}}[{window}]))',
        "failed": f'sum(rate({total}{{{sel},outcome!="success"}}[{window}]))',
        "waiting": f"sum({waiting})",
        "waiting_per_worker": f"sum({waiting}) / count({waiting})",
        "desired": f"max(llmfleet_operator_desired_replicas{{{sel}}})",
        "ready": f"max(llmfleet_operator_ready_replicas{{{sel}}})",
        "max": f"max(llmfleet_operator_max_replicas{{{sel}}})",
        "ttft_p95": (
            "histogram_quantile(0.95, sum by (le) "
            f"(rate(llmfleet_worker_time_to_first_token_seconds_bucket{{{sel}}}[{window}])))"
        ),
    }


#: Legend label of each query of :func:`burst_queries`.
BURST_LABELS = {
    "in_flight": "in flight (running + waiting)",
    "served": "completed",
    "failed": "failed or rejected",
    "waiting": "waiting, all workers",
    "waiting_per_worker": "waiting per worker",
    "desired": "desired",
    "ready": "ready",
    "max": "maxReplicas",
    "ttft_p95": "TTFT p95",
}


def burst_panels(
    results: Mapping[str, Matrix],
    *,
    start: float,
    step: float = BURST_STEP,
    target_queue_per_replica: float | None = None,
    window: str = BURST_RATE_WINDOW,
) -> list[Panel]:
    """The burst figure's panels from the range-query ``results`` of :func:`burst_queries`
    (by the same keys; a missing key draws nothing), with t = 0 at ``start``."""

    def lines(*keys: str, dashed: str = "", wide: str = "") -> list[Series]:
        out = []
        for key in keys:
            found = series_from_matrix(results.get(key, []), start=start, step=step)
            out += [
                Series(BURST_LABELS[key], s.t, s.v, dashed=key == dashed, wide=key == wide)
                for s in found
            ]
        return out

    queue_refs = []
    if target_queue_per_replica is not None:
        target = f"{target_queue_per_replica:g}"
        queue_refs.append((target_queue_per_replica, f"target per replica ({target})"))
    return [
        Panel(
            "Offered load: requests in the workers (each client has one out at a time)",
            "requests",
            lines("in_flight"),
            integer=True,
        ),
        Panel(
            f"Throughput: requests completed per second (rate over {window})",
            "requests/s",
            lines("served", "failed"),
        ),
        Panel(
            "Queue depth: requests waiting for a batch slot",
            "requests",
            lines("waiting", "waiting_per_worker", wide="waiting"),
            hlines=queue_refs,
        ),
        Panel(
            "Replicas: status.desiredReplicas and status.readyReplicas (operator metrics)",
            "replicas",
            lines("desired", "ready", "max", dashed="max", wide="desired"),
            steps=True,
            integer=True,
        ),
        Panel(
            f"Time to first token: p95 over {window} from histogram buckets (no line: no requests)",
            "seconds",
            lines("ttft_p95"),
            empty_note="no requests",
        ),
    ]


def render_burst(burst: Mapping[str, Any], path: Path | str) -> Path:
    """The burst figure from what ``make demo`` saves next to it (``burst.json``).

    ``burst``: ``start`` and ``burst_end`` (Unix seconds), ``clients``, ``title``,
    ``target_queue_per_replica`` (or null) and ``results``, the range-query results by the
    keys of :func:`burst_queries`.
    """
    start = float(burst["start"])
    panels = burst_panels(
        burst["results"],
        start=start,
        step=float(burst.get("step", BURST_STEP)),
        target_queue_per_replica=burst.get("target_queue_per_replica"),
    )
    span = Span(0.0, float(burst["burst_end"]) - start, f"burst: {burst['clients']} clients")
    return render_timeseries(
        panels,
        path,
        title=str(burst["title"]),
        xlabel="seconds since the burst began",
        spans=[span],
    )


@dataclass(frozen=True)
class ThroughputRow:
    """One contender at one concurrency, as ``bench/worker_throughput.py`` prints it."""

    contender: str
    concurrency: int
    tokens_per_s: float
    ttft_p50: float = math.nan  # seconds; nan: no per-request first-token time
    ttft_p95: float = math.nan


def _log2_concurrency_axis(ax: Axes, levels: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(levels), [str(c) for c in levels])
    ax.minorticks_off()


def render_throughput(rows: Sequence[ThroughputRow], path: Path | str, *, title: str) -> Path:
    """Tokens/s and TTFT p50/p95 by concurrency, a line per contender.

    A contender measured at one concurrency only (the sequential naive baseline, whose
    numbers do not depend on it) is drawn as a dashed horizontal line across the axis.
    """
    if not rows:
        raise PlotError("no throughput results to draw")
    levels = sorted({r.concurrency for r in rows})
    contenders = list(dict.fromkeys(r.contender for r in rows))
    fig = _new_figure(11.0, 7.5)
    tps_ax, ttft_ax = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title, fontweight="bold")
    colors = _colors(len(contenders))
    for name, color in zip(contenders, colors, strict=True):
        mine = sorted((r for r in rows if r.contender == name), key=lambda r: r.concurrency)
        # One concurrency only, while others have more: a baseline that does not depend on it.
        if len(mine) == 1 and len(levels) > 1:
            mine = [ThroughputRow(name, c, *astuple(mine[0])[2:]) for c in levels]
            style: dict[str, Any] = {"color": color, "lw": 1.8, "ls": "--"}
        else:
            style = {"color": color, "lw": 1.8, "marker": "o"}
        xs = [r.concurrency for r in mine]
        tps_ax.plot(xs, [r.tokens_per_s for r in mine], label=name, **style)
        if any(math.isfinite(r.ttft_p50) for r in mine):
            p50 = [r.ttft_p50 * 1000 for r in mine]
            ttft_ax.plot(xs, p50, label=f"{name} p50", **style)
            p95 = [r.ttft_p95 * 1000 for r in mine]
            ttft_ax.plot(xs, p95, label=f"{name} p95", **{**style, "ls": ":", "lw": 1.4})
    tps_ax.set_title("Throughput: generated tokens/s (median over repeats)", loc="left")
    tps_ax.set_ylabel("tokens/s")
    tps_ax.set_ylim(bottom=0)
    ttft_ax.set_title("Time to first token: p50 and p95 (dotted), log scale", loc="left")
    ttft_ax.set_ylabel("TTFT, ms")
    ttft_ax.set_yscale("log")
    ttft_ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ttft_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ttft_ax.yaxis.set_minor_formatter(NullFormatter())
    ttft_ax.set_xlabel("concurrent clients (closed loop)")
    for ax in (tps_ax, ttft_ax):
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax)
    _log2_concurrency_axis(ttft_ax, levels)
    return _save(fig, path)


def _colors(n: int) -> list[Any]:
    cycle = [f"C{i}" for i in range(10)]
    return [cycle[i % len(cycle)] for i in range(n)]


@dataclass(frozen=True)
class ReactionRun:
    """One live run of ``bench/autoscale_reaction.py``: seconds from the load step."""

    decision: float
    pods_ready: float
    serving: float
    to: int


@dataclass(frozen=True)
class ReplayTrace:
    """The replayed burst-and-idle trace: offered load and the decided replicas per step."""

    t: Sequence[float]  # seconds
    load: Sequence[float]  # requests in flight
    replicas: Sequence[int]
    flaps: int


@dataclass(frozen=True)
class Reaction:
    runs: Sequence[ReactionRun]
    target: float  # seconds: the decision target
    burst: ReplayTrace
    flaps_per_hour: Sequence[int] = field(default_factory=list)


def render_reaction(data: Reaction, path: Path | str, *, title: str) -> Path:
    """The live reaction times per run (if any), the replayed burst and flaps per noisy hour."""
    rows = 3 if data.runs else 2
    fig = _new_figure(10.0, 2.9 * rows + 0.6)
    axes = list(fig.subplots(rows, 1, squeeze=False)[:, 0])
    fig.suptitle(title, fontweight="bold")
    if data.runs:
        ax = axes.pop(0)
        width = 0.26
        stages = [("decision", "tab:blue"), ("pods_ready", "tab:green"), ("serving", "tab:red")]
        names = {
            "decision": "scale-up decision",
            "pods_ready": "pods Ready",
            "serving": "new workers serving",
        }
        xs = list(range(1, len(data.runs) + 1))
        for k, (stage, color) in enumerate(stages):
            values = [getattr(r, stage) for r in data.runs]
            ax.bar(
                [x + (k - 1) * width for x in xs], values, width, label=names[stage], color=color
            )
        ax.axhline(
            data.target, ls="--", color="grey", lw=1, label=f"decision target {data.target:.1f} s"
        )
        ax.set_xticks(xs, [f"run {x}\n1 -> {r.to}" for x, r in zip(xs, data.runs, strict=True)])
        ax.set_title("Live: seconds from the load step until ...", loc="left")
        ax.set_ylabel("seconds")
        ax.grid(True, axis="y", alpha=0.3)
        _legend(ax)
    ax = axes[0]
    minutes = [t / 60 for t in data.burst.t]
    ax.plot(minutes, data.burst.load, color="tab:orange", lw=1.6, label="offered load")
    ax.set_ylabel("requests in flight")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.step(
        minutes, data.burst.replicas, where="post", color="tab:blue", lw=2, label="replicas decided"
    )
    right.set_ylabel("replicas")
    right.set_ylim(bottom=0)
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    _legend(ax, handles, x=1.08)  # past the right axis' labels
    ax.set_title(f"Replay: burst-and-idle trace, {data.burst.flaps} flaps", loc="left")
    ax.set_xlabel("minutes")
    ax.grid(True, alpha=0.3)
    ax = axes[1]
    flaps = list(data.flaps_per_hour)
    ax.bar(range(len(flaps)), flaps, color="tab:purple")
    ax.set_title(
        f"Replay: flaps per noisy steady hour ({len(flaps)} seeds, total {sum(flaps)}, "
        f"worst {max(flaps, default=0)})",
        loc="left",
    )
    if not sum(flaps):
        ax.text(0.5, 0.5, "no flaps", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("seed")
    ax.set_ylabel("flaps")
    ax.set_ylim(0, max(1, *flaps) + 0.5 if flaps else 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


@dataclass(frozen=True)
class OperatorScale:
    """What ``bench/operator_scale.py`` measures (latencies in seconds, sorted or not)."""

    count: int
    latencies: Mapping[str, Sequence[float]]  # label -> per-LLMDeployment seconds
    requests_converge: Mapping[str, int]  # API verb -> requests during convergence
    requests_idle: Mapping[str, int]  # API verb -> requests during the idle window
    idle_seconds: float


def render_operator_scale(data: OperatorScale, path: Path | str, *, title: str) -> Path:
    """The share of LLMDeployments done within t (one curve per latency), and API requests."""
    fig = _new_figure(12.0, 4.8)
    cdf_ax, req_ax = fig.subplots(1, 2, width_ratios=(3, 2))
    fig.suptitle(title, fontweight="bold")
    for label, values in data.latencies.items():
        xs = sorted(values)
        if xs:
            ys = [(i + 1) / len(xs) * 100 for i in range(len(xs))]
            cdf_ax.step(xs, ys, where="post", lw=1.8, label=f"{label} (n={len(xs)})")
    cdf_ax.set_title(f"Latency per LLMDeployment ({data.count} applied at once)", loc="left")
    cdf_ax.set_xlabel("seconds after the LLMDeployments were created")
    cdf_ax.set_ylabel("% of LLMDeployments done")
    cdf_ax.set_ylim(0, 102)
    cdf_ax.set_xlim(left=0)
    cdf_ax.grid(True, alpha=0.3)
    cdf_ax.legend(loc="lower right", fontsize="small")
    verbs = sorted(set(data.requests_converge) | set(data.requests_idle))
    ys_pos = list(range(len(verbs)))
    h = 0.4
    for offset, counts, label, color in (
        (-h / 2, data.requests_converge, "convergence", "tab:blue"),
        (h / 2, data.requests_idle, f"idle {data.idle_seconds:.0f} s", "tab:green"),
    ):
        bars = req_ax.barh(
            [y + offset for y in ys_pos],
            [counts.get(v, 0) for v in verbs],
            h,
            label=label,
            color=color,
        )
        req_ax.bar_label(bars, fontsize="x-small", padding=2)
    req_ax.set_yticks(ys_pos, verbs)
    req_ax.invert_yaxis()
    req_ax.set_title("API requests by the operator, by verb", loc="left")
    req_ax.set_xlabel("requests (API server audit log)")
    req_ax.grid(True, axis="x", alpha=0.3)
    req_ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def is_png(path: Path | str) -> bool:
    """Whether the file exists, is non-empty and starts with the PNG signature."""
    path = Path(path)
    return (
        path.is_file()
        and path.stat().st_size > len(PNG_MAGIC)
        and (path.read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llmfleet_dev.plots BURST.json OUT.png``: draw a saved burst again."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("burst", type=Path, help="the burst.json that `make demo` wrote")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    print(render_burst(json.loads(args.burst.read_text()), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
