"""Memory is a tested promise (#16): the streaming tasks' peak RSS does not grow with rows.

Each measured task runs alone in a fresh Python process (``bench/scale/tasks.py``), which
reports its ``ru_maxrss`` after imports (the baseline) and after the task; the test compares
what the task itself held at its peak on a dataset ten times larger than another (1M vs 100k
narrow rows): it may not grow with the rows (a bound, ``GROWTH``, far below the 10x of a
frame held whole). The control, the single-task extract that reads the file whole, must grow, so
the measurement is known to see a dataset held in memory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SMALL, LARGE = 100_000, 1_000_000
# At ten times the rows a streaming task may hold at most this many times more (measured on
# a 2-core machine: extract 1.6x, batch prediction 1.7x; the whole-file extract 4.7x). The
# allocator's high-water mark still creeps between 100k and 1M rows; docs/scale.md.
GROWTH = 2.5


def measure(task: str, workdir: Path) -> dict[str, Any]:
    # 1 MiB CSV blocks: both files span several blocks, so the bound is reached at both sizes
    # (with the default 16 MiB, the 100k-row file is a single partial block).
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale.tasks", task, str(workdir), "--csv-block-mb", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A 100k-row and a 1M-row synthetic churn CSV, and a small model both are scored with."""
    sys.path.insert(0, str(ROOT))
    from bench.scale import tasks

    folders = {}
    for rows in (20_000, SMALL, LARGE):
        folder = tmp_path_factory.mktemp(f"rows{rows}")
        tasks.generate(folder, rows)
        folders[rows] = folder
    model_dir = folders[20_000]
    tasks.extract(model_dir)
    tasks.transform(model_dir)
    tasks.train(model_dir)
    for rows in (SMALL, LARGE):
        shutil.copytree(model_dir / "train" / "model", folders[rows] / "train" / "model")
    return folders


def test_peak_rss_of_streaming_tasks_does_not_grow_with_rows(workdirs: dict[int, Path]) -> None:
    peaks: dict[str, dict[int, float]] = {}
    for task in ("extract", "predict"):
        for rows in (SMALL, LARGE):
            document = measure(task, workdirs[rows])
            assert document["rows"] == rows
            peaks.setdefault(task, {})[rows] = document["task_mb"]
    for task, by_rows in peaks.items():
        assert by_rows[LARGE] <= GROWTH * by_rows[SMALL], (task, by_rows)
    # The control: reading the 1M-row file whole holds more than streaming it.
    whole = measure("extract_whole", workdirs[LARGE])
    assert whole["task_mb"] > 1.5 * peaks["extract"][LARGE], (whole, peaks)
