"""The instruction benchmark's pure helpers (bench/serving/capture_instructions.py): reading
callgrind's output and the cells given on its command line. The benchmark itself never runs
in CI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from bench_scripts import load

pytestmark = pytest.mark.unit


def _script() -> Any:
    return load("serving/capture_instructions.py")


CALLGRIND = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 31247
cmd:  python -m serving
part: 1
thread: 2

desc: Trigger: Client Request: dump
events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
summary: 126745 27914 11771 1083 919 573 1065 783 548

fn=(1) main
0 3 1
totals: 126743 27914 11771 1082 919 573 1064 783 548
"""


def test_reads_a_threads_event_totals_from_its_totals_line() -> None:
    thread, counts = _script().parse_callgrind(CALLGRIND)
    assert thread == 2
    assert counts["Ir"] == 126743
    assert (counts["ILmr"], counts["DLmr"], counts["DLmw"]) == (1064, 783, 548)


def test_falls_back_to_the_summary_and_counts_missing_events_as_zero() -> None:
    text = "events: Ir Dr\nsummary: 42\n"
    assert _script().parse_callgrind(text) == (1, {"Ir": 42, "Dr": 0})
    with pytest.raises(ValueError, match="not a callgrind output file"):
        _script().parse_callgrind("hello\n")


def test_reads_dumps_by_thread(tmp_path: Path) -> None:
    (tmp_path / "cg.out.1-01").write_text(CALLGRIND.replace("thread: 2", "thread: 1"))
    (tmp_path / "cg.out.1-02").write_text(CALLGRIND)
    (tmp_path / "cg.out-01").write_text(CALLGRIND)  # at exit: not the dump asked for
    by_thread = _script().dumped(tmp_path, 1)
    assert sorted(by_thread) == [1, 2]


def test_cells_default_to_a_warm_up_of_one_batch_and_refuse_a_partial_one() -> None:
    parse_cell = _script().parse_cell
    assert parse_cell("1:2000") == (1, 2000, 1000, 1000)
    assert parse_cell("100:300") == (100, 300, 100, 10_000)
    assert parse_cell("1:300:200:100") == (1, 300, 200, 100)
    with pytest.raises(argparse.ArgumentTypeError, match="whole batches"):
        parse_cell("100:300:50")
