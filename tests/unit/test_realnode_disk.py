"""The real node's bookkeeping that keeps a full disk from failing a whole test run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from llmfleet_dev import realnode


def test_an_import_the_disk_cannot_take_is_refused_with_both_numbers(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    why = realnode.disk_shortfall(tmp_path, free)  # twice the free space, plus headroom
    assert why is not None
    assert str(tmp_path) in why
    assert f"{free / 2**30:.1f} GiB free" in why
    assert f"needs {(2 * free + realnode.DISK_HEADROOM) / 2**30:.1f} GiB" in why


def test_a_small_import_into_a_slot_not_made_yet_is_measured_where_it_will_live(
    tmp_path: Path,
) -> None:
    assert realnode.disk_shortfall(tmp_path / "realnode" / "slot-3", 1) is None
    assert not (tmp_path / "realnode").exists()  # asking made nothing


def test_a_slot_record_that_is_missing_or_torn_reads_as_nothing_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLEET_CACHE", str(tmp_path))
    assert realnode.imported_ids(0) == {}
    record = tmp_path / "realnode" / "slot-0.images"
    record.parent.mkdir()
    record.write_text('{"localhost/llmfleet/worker:dev": ["abc", 12')
    assert realnode.imported_ids(0) == {}
    record.write_text('{"localhost/llmfleet/worker:dev": ["abc", 12]}')
    assert realnode.imported_ids(0) == {"localhost/llmfleet/worker:dev": ("abc", 12)}


def test_a_slot_whose_owner_is_gone_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLEET_CACHE", str(tmp_path))
    (tmp_path / "realnode").mkdir()
    (tmp_path / "realnode" / "slot-0.owner").write_text(str(os.getpid()))
    (tmp_path / "realnode" / "slot-1.owner").write_text("999999999")  # no such process
    (tmp_path / "realnode" / "slot-2.owner").write_text("not a pid")
    assert realnode.free_slots() == [1, 2, 3]
