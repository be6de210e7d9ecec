"""The continuous batching scheduler, without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmfleet_worker.engine.scheduler import (
    QueueFullError,
    SamplingParams,
    Scheduler,
    Sequence,
    SequenceStatus,
)

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def make(**kw: int) -> Scheduler:
    args = {"max_num_seqs": 2, "max_num_batched_tokens": 16, "max_model_len": 64, "max_queue": 3}
    args.update(kw)
    return Scheduler(**args)


def seq(n: int) -> Sequence:
    return Sequence(list(range(1, n + 1)), GREEDY)


def run_step(s: Scheduler, token: int = 7) -> list[tuple[Sequence, int, int, bool]]:
    plan = s.schedule()
    assert plan is not None
    s.complete(plan)
    for chunk in plan.chunks:
        if chunk.sample:
            chunk.seq.output_ids.append(token)
    return [(c.seq, c.start, c.length, c.sample) for c in plan.chunks]


def test_scheduler_and_engine_loop_do_not_import_torch() -> None:
    code = (
        "import sys, llmfleet_worker.engine.scheduler, llmfleet_worker.engine.core;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_prefill_is_chunked_by_the_token_budget_and_samples_only_at_the_end() -> None:
    s = make(max_num_batched_tokens=4)
    a = seq(10)
    s.add(a)
    assert run_step(s) == [(a, 0, 4, False)]
    assert run_step(s) == [(a, 4, 4, False)]
    assert run_step(s) == [(a, 8, 2, True)]
    assert a.output_ids == [7]
    assert run_step(s) == [(a, 10, 1, True)]  # decoding: one token per step


def test_decodes_go_first_and_new_requests_join_at_a_step_boundary() -> None:
    s = make(max_num_batched_tokens=6)
    a, b = seq(3), seq(8)
    s.add(a)
    run_step(s)
    s.add(b)
    # a decodes (1 token); b's prefill gets the rest of the budget.
    assert run_step(s) == [(a, 3, 1, True), (b, 0, 5, False)]
    assert run_step(s) == [(a, 4, 1, True), (b, 5, 3, True)]
    assert run_step(s) == [(a, 5, 1, True), (b, 8, 1, True)]


def test_max_num_seqs_bounds_the_batch_and_the_queue_is_bounded() -> None:
    s = make(max_num_seqs=2, max_queue=4)
    seqs = [seq(2) for _ in range(4)]
    for q in seqs:
        s.add(q)
    with pytest.raises(QueueFullError):
        s.add(seq(2))
    rows = run_step(s)
    assert [r[0] for r in rows] == seqs[:2]
    assert s.num_running == 2
    assert s.num_waiting == 2


def test_queue_limit_counts_only_waiting_requests() -> None:
    s = make(max_num_seqs=2, max_queue=1)
    s.add(seq(2))
    with pytest.raises(QueueFullError):
        s.add(seq(2))
    run_step(s)
    s.add(seq(2))  # the first one runs now, so there is room again


def test_finishing_moves_the_last_row_into_the_hole() -> None:
    s = make(max_num_seqs=3)
    a, b, c = seq(2), seq(2), seq(2)
    for q in (a, b, c):
        s.add(q)
    run_step(s)
    assert [a.slot, b.slot, c.slot] == [0, 1, 2]
    s.finish(a, "stop")
    assert a.status is SequenceStatus.FINISHED
    assert a.slot is None
    assert s.running == [c, b]
    assert (c.slot, b.slot) == (0, 1)
    plan = s.schedule()
    assert plan is not None
    assert plan.moves == [(2, 0, c.num_computed)]
    assert plan.num_rows == 2
    assert [ch.seq for ch in plan.chunks] == [c, b]


def test_cancelled_sequences_leave_at_the_next_step() -> None:
    s = make(max_num_seqs=2)
    a, b, c = seq(2), seq(2), seq(2)
    for q in (a, b, c):
        s.add(q)
    run_step(s)
    s.abort(a)
    s.abort(c)  # still waiting
    gone = s.collect_cancelled()
    assert set(gone) == {a, c}
    assert a.finish_reason == "cancelled"
    assert s.running == [b]
    assert s.num_waiting == 0


def test_empty_or_overlong_prompts_are_refused() -> None:
    s = make(max_model_len=8)
    with pytest.raises(ValueError, match="empty"):
        s.add(Sequence([], GREEDY))
    with pytest.raises(ValueError, match="max_model_len"):
        s.add(seq(8))


def test_nothing_to_do_means_no_plan() -> None:
    assert make().schedule() is None
