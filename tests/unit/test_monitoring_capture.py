"""Capture and label storage: schemas, partitions, reading windows, idempotent labels, joins."""

from __future__ import annotations

import errno
import logging
import mmap
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlwp.monitoring import capture
from mlwp.monitoring.capture import (
    CAPTURE,
    LABELS,
    MonitoringError,
    join_labels,
    label_report,
    labels_table,
    read_capture,
    read_labels,
    write_labels,
    write_parts,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 28, 23, 59, 0, tzinfo=UTC)


def capture_rows(rows: list[dict]) -> pa.Table:
    base = {
        "row": 0,
        "model": "churn",
        "version": "1",
        "variant": "champion",
        "served": True,
        "routing_key": None,
        "entity_key": None,
        "inputs": "{}",
        "prediction": 1.0,
        "probability": 0.8,
        "outputs": "{}",
        "latency_ms": 1.5,
    }
    return pa.Table.from_pylist([{**base, **row} for row in rows], schema=capture.CAPTURE_SCHEMA)


def test_schemas_are_the_contracts() -> None:
    assert capture.CAPTURE_SCHEMA.names == list(capture.CAPTURE_COLUMNS)
    assert capture.LABEL_SCHEMA.names == list(capture.LABEL_COLUMNS)
    assert capture.CAPTURE_SCHEMA.field("time").type == pa.timestamp("ms", tz="UTC")
    assert capture.CAPTURE_SCHEMA.field("row").type == pa.int32()
    with pytest.raises(AttributeError):
        _ = capture.NO_SUCH_THING  # type: ignore[attr-defined]


def test_parts_split_by_day_and_read_back_by_window(tmp_path: Path) -> None:
    root = tmp_path.as_uri()
    table = capture_rows(
        [
            {"inference_id": "a", "time": T0},
            {"inference_id": "b", "time": T0 + timedelta(minutes=2)},  # next day
            {"inference_id": "c", "time": T0 + timedelta(days=1, minutes=2)},
        ]
    )
    uris = write_parts(root, CAPTURE, "churn", table)
    assert len(uris) == 3
    days = sorted(
        p.parent.name for p in (tmp_path / "monitoring/capture/model=churn").rglob("*.parquet")
    )
    assert days == ["date=2026-11-28", "date=2026-11-29", "date=2026-11-30"]
    assert pq.read_schema(uris[0].removeprefix("file://")) == capture.CAPTURE_SCHEMA

    everything = read_capture(root, "churn")
    assert list(everything["inference_id"]) == ["a", "b", "c"]
    assert list(everything.columns) == list(capture.CAPTURE_COLUMNS)
    window = read_capture(root, "churn", T0 + timedelta(minutes=1), "2026-11-30T00:00:00")
    assert list(window["inference_id"]) == ["b"]
    assert read_capture(root, "other").empty
    assert list(read_capture(root, "other").columns) == list(capture.CAPTURE_COLUMNS)


def request_parts(requests: list[dict]) -> pa.Table:
    """Captured requests as serving stores them (format 2)."""
    base = {
        "model": "churn",
        "version": "1",
        "variant": "champion",
        "served": True,
        "routing_key": "u",
        "entity_field": "customer",
        "classes": '["No","Yes"]',
        "latency_ms": 2.0,
    }
    rows = []
    for request in requests:
        records = request.pop("records")
        predictions = request.pop("predictions")
        body = {"data": records, "routing_key": "u"}
        answer = {"predictions": predictions, "probabilities": [[0.4, 0.6]] * len(predictions)}
        rows.append(
            {
                **base,
                "rows": len(records),
                "request": orjson.dumps(body),
                "response": orjson.dumps(answer),
                **request,
            }
        )
    return pa.Table.from_pylist(rows, schema=capture.request_schema())


def test_request_parts_read_as_record_rows_beside_record_parts(tmp_path: Path) -> None:
    """Serving's request parts (format 2) and record parts (format 1, what serving wrote
    before) in the same folders read back as one frame of record rows, in time order, the
    window cutting requests before they are taken apart."""
    root = tmp_path.as_uri()
    records = [{"customer": "c1", "x": 1}, {"customer": "c2", "x": 2}]
    uris = write_parts(
        root,
        CAPTURE,
        "churn",
        request_parts(
            [
                {
                    "inference_id": "new",
                    "time": T0,
                    "records": records,
                    "predictions": ["Yes", "No"],
                },
                {
                    "inference_id": "late",
                    "time": T0 + timedelta(days=1),
                    "records": records[:1],
                    "predictions": ["No"],
                },
            ]
        ),
    )
    assert pq.read_schema(uris[0].removeprefix("file://")) == capture.request_schema()
    assert pq.read_schema(uris[0].removeprefix("file://")).metadata == {
        b"mlwp.capture.format": b"2"
    }
    write_parts(
        root,
        CAPTURE,
        "churn",
        capture_rows([{"inference_id": "old", "time": T0 - timedelta(minutes=1)}]),
    )

    frame = read_capture(root, "churn")
    assert list(frame.columns) == list(capture.CAPTURE_COLUMNS)
    assert list(frame["inference_id"]) == ["old", "new", "new", "late"]
    assert list(frame["row"]) == [0, 0, 1, 0]
    assert list(frame["entity_key"].iloc[1:3]) == ["c1", "c2"]
    assert list(frame["prediction"].iloc[1:3]) == [1.0, 0.0]
    assert list(frame["probability"].iloc[1:3]) == [0.6, 0.6]
    assert [orjson.loads(text) for text in frame["inputs"].iloc[1:3]] == records
    assert set(frame["routing_key"].iloc[1:]) == {"u"}
    window = read_capture(root, "churn", T0, T0 + timedelta(hours=1))
    assert list(window["inference_id"]) == ["new", "new"]


def same_rows(frame: pd.DataFrame, other: pd.DataFrame) -> bool:
    """The same record rows (a record's JSON text may end in a space or not, depending on
    the batch it was cut from: capture_rows.json_rows)."""

    def stripped(f: pd.DataFrame) -> pd.DataFrame:
        return f.assign(inputs=f["inputs"].str.strip(), outputs=f["outputs"].str.strip())

    return stripped(frame).equals(stripped(other))


def test_spool_parts_read_then_compact_into_parquet_losing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving's spool parts (Arrow IPC) read like Parquet parts; compaction folds a day's
    spool into one zstd Parquet part and deletes it. A compaction that stops after writing
    its part but before deleting the spool counts nothing twice, and the next run finishes
    the job; spool parts that arrive later are folded by a later run."""
    root = tmp_path.as_uri()
    records = [{"customer": "c1", "x": 1}, {"customer": "c2", "x": 2}]

    def spool(inference_id: str, time: datetime) -> list[str]:
        table = request_parts(
            [
                {
                    "inference_id": inference_id,
                    "time": time,
                    "records": records,
                    "predictions": [1, 0],
                }
            ]
        )
        return capture.write_spool(root, "churn", table)

    [first] = spool("a", T0)
    spool("b", T0 + timedelta(seconds=1))
    spool("c", T0 + timedelta(days=1))  # the next day's folder
    assert first.endswith(".spool") and "/date=2026-11-28/" in first
    before = read_capture(root, "churn")
    assert list(before["inference_id"]) == ["a", "a", "b", "b", "c", "c"]
    folder = tmp_path / "monitoring/capture/model=churn"

    def stop(path: str) -> None:
        raise OSError("stopped")

    monkeypatch.setattr(type(capture.filesystem(root)[0]), "rm", lambda self, path: stop(path))
    with pytest.raises(OSError, match="stopped"):
        capture.compact_capture(root, "churn")
    monkeypatch.undo()
    assert len(list(folder.rglob("*.parquet"))) == 1  # written, its spool still there
    assert same_rows(read_capture(root, "churn"), before)

    counts = capture.compact_capture(root, "churn")
    assert counts == {"spooled": 1, "requests": 1, "parts": 1, "removed": 3, "parts_refused": []}
    assert not list(folder.rglob("*.spool"))
    parts = sorted(folder.rglob("*.parquet"))
    assert len(parts) == 2 and all(p.name.startswith("compacted-") for p in parts)
    assert pq.ParquetFile(parts[0]).metadata.row_group(0).column(9).compression == "ZSTD"
    assert same_rows(read_capture(root, "churn"), before)
    assert capture.compact_capture(root, "churn") == {
        **dict.fromkeys(("spooled", "requests", "parts", "removed"), 0),
        "parts_refused": [],
    }
    spool("d", T0 + timedelta(seconds=2))
    assert capture.compact_capture(root, "churn")["spooled"] == 1
    assert list(read_capture(root, "churn")["inference_id"].unique()) == ["a", "b", "d", "c"]


@pytest.mark.parametrize("codec", ["zstd", "lz4", "lz4_raw"])
def test_spool_parts_are_compressed_when_asked(tmp_path: Path, codec: str) -> None:
    records = [
        {"customer": f"c{i}", "tenure": i, "contract": "Month-to-month"} for i in range(2000)
    ]
    table = request_parts(
        [{"inference_id": "a", "time": T0, "records": records, "predictions": [1] * 2000}]
    )
    body = len(table["request"][0].as_py()) + len(table["response"][0].as_py())
    [plain] = capture.write_spool(tmp_path.as_uri(), "churn", table)
    [packed] = capture.write_spool((tmp_path / "z").as_uri(), "churn", table, codec=codec)
    assert Path(plain.removeprefix("file://")).stat().st_size > body
    assert Path(packed.removeprefix("file://")).stat().st_size < body / 4
    assert same_rows(
        read_capture(tmp_path.as_uri(), "churn"), read_capture((tmp_path / "z").as_uri(), "churn")
    )
    assert capture.compact_capture((tmp_path / "z").as_uri(), "churn")["requests"] == 1
    assert same_rows(
        read_capture(tmp_path.as_uri(), "churn"), read_capture((tmp_path / "z").as_uri(), "churn")
    )
    assert len(read_capture(tmp_path.as_uri(), "churn")) == 2000
    with pytest.raises(MonitoringError, match="spool codec 'gzip' is not one of"):
        capture.write_spool(tmp_path.as_uri(), "churn", table, codec="gzip")


def test_spool_part_round_trips_the_buffers_as_given(tmp_path: Path) -> None:
    """What serving hands over (columns, and the bodies back to back in two buffers) reads
    back as the requests it holds; a part holds one day, and one cut short is named."""
    bodies = [orjson.dumps({"data": [{"x": i}] * i}) for i in (1, 2, 3)]
    answers = [
        orjson.dumps({"predictions": [1] * i, "probabilities": [[0.5, 0.5]] * i}) for i in (1, 2, 3)
    ]
    millis = int(T0.timestamp() * 1000)
    columns = {
        "inference_id": ["a", "b", "c"],
        "time": [millis, millis + 1, millis + 2],
        "model": ["churn"] * 3,
        "version": ["1", "1", "2"],
        "variant": ["champion", "champion", "shadow"],
        "served": [True, True, False],
        "routing_key": [None, "u", "u"],
        "entity_field": ["customer"] * 3,
        "rows": [1, 2, 3],
        "request_size": [len(b) for b in bodies],
        "response_size": [len(a) for a in answers],
        "classes": ['["No","Yes"]'] * 3,
        "latency_ms": [1.5, 2.5, 3.5],
    }
    root = tmp_path.as_uri()
    area = bytearray(1 << 16)
    joined = b"".join(bodies)
    area[: len(joined)] = joined
    uri = capture.SpoolWriter(root).write(
        "churn", columns, memoryview(area)[: len(joined)], b"".join(answers)
    )
    path = Path(uri.removeprefix("file://"))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    table = capture.read_spool(f"file://{path}")
    assert table.schema.equals(capture.request_schema(), check_metadata=True)
    assert table["request"].to_pylist() == bodies
    assert table["response"].to_pylist() == answers
    assert table["served"].to_pylist() == [True, True, False]
    assert table["routing_key"].to_pylist() == [None, "u", "u"]
    assert table["time"][0].as_py() == T0
    frame = read_capture(root, "churn")
    assert list(frame["inference_id"]) == ["a", "b", "b", "c", "c", "c"]

    with pytest.raises(MonitoringError, match="one day's requests; these span 2 days"):
        capture.SpoolWriter(root).write(
            "churn",
            {**columns, "time": [millis, millis, millis + 86_400_000]},
            joined,
            b"".join(answers),
        )
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(MonitoringError, match=r"\.spool: not a capture spool part: cut short"):
        capture.read_spool(f"file://{path}")
        # a reader skips it (test_a_broken_spool_part_is_skipped_named_and_set_aside)


def test_arrow_spool_parts_of_before_are_read_and_compacted(tmp_path: Path) -> None:
    """Spool parts serving wrote in session 10 (Arrow IPC files) read and compact beside
    the framed ones."""
    root = tmp_path.as_uri()
    table = request_parts(
        [{"inference_id": "old", "time": T0, "records": [{"x": 1}], "predictions": [1]}]
    )
    [new] = capture.write_spool(
        root,
        "churn",
        request_parts(
            [{"inference_id": "new", "time": T0, "records": [{"x": 2}], "predictions": [0]}]
        ),
    )
    folder = Path(new.removeprefix("file://")).parent
    with (
        pa.OSFile(str(folder / "0old.arrow"), "wb") as sink,
        pa.ipc.new_file(
            sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")
        ) as out,
    ):
        out.write_table(table)
    before = read_capture(root, "churn")
    assert sorted(before["inference_id"]) == ["new", "old"]
    assert capture.compact_capture(root, "churn")["spooled"] == 2
    assert sorted(p.suffix for p in folder.iterdir()) == [".parquet"]
    assert same_rows(read_capture(root, "churn"), before)


def test_a_broken_spool_part_is_skipped_named_and_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A part cut short (a power loss after the rename) or corrupt costs itself, not the
    monitor: readers skip it with a warning naming it, compaction folds the rest, renames it
    to ``.corrupt`` (which nothing reads) and lists it in ``parts_refused``; the next run
    and the reads after find everything else once."""
    root = tmp_path.as_uri()

    def spool(inference_id: str) -> Path:
        table = request_parts(
            [{"inference_id": inference_id, "time": T0, "records": [{}], "predictions": [1]}]
        )
        [uri] = capture.write_spool(root, "churn", table)
        return Path(uri.removeprefix("file://"))

    good, cut = spool("a"), spool("b")
    spool("c")
    folder = good.parent
    cut.write_bytes(cut.read_bytes()[:-20])  # its end lost
    (folder / "x.spool").write_bytes(b"")  # renamed, never written
    (folder / "y.arrow").write_bytes(b"not arrow")
    with caplog.at_level(logging.WARNING, logger="mlwp.monitoring.capture"):
        read = read_capture(root, "churn")
    assert sorted(read["inference_id"]) == ["a", "c"]
    for name in (cut.name, "x.spool", "y.arrow"):
        assert any(name in message and "skipped" in message for message in caplog.messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlwp.monitoring.capture"):
        counts = capture.compact_capture(root, "churn")
    refused = counts.pop("parts_refused")
    assert counts == {"spooled": 2, "requests": 2, "parts": 1, "removed": 2}
    assert sorted(Path(r["part"]).name for r in refused) == sorted([cut.name, "x.spool", "y.arrow"])
    assert all(r["moved_to"] == r["part"] + ".corrupt" for r in refused)
    assert any("cut short" in r["reason"] for r in refused)
    assert sum("refused" in message for message in caplog.messages) == 3
    names = sorted(p.name for p in folder.iterdir())
    assert [n for n in names if n.endswith(".parquet")] and not [
        n for n in names if n.endswith((".spool", ".arrow", ".tmp"))
    ]
    assert sorted(n for n in names if n.endswith(".corrupt")) == sorted(
        f"{n}.corrupt" for n in (cut.name, "x.spool", "y.arrow")
    )
    assert same_rows(read_capture(root, "churn"), read)
    assert capture.compact_capture(root, "churn") == {
        "spooled": 0,
        "requests": 0,
        "parts": 0,
        "removed": 0,
        "parts_refused": [],
    }


def test_a_storage_error_is_not_a_refused_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError reading a part is the storage's (every part after it would fail alike):
    raised as before (the monitor reports it and reads), nothing moved or deleted."""
    root = tmp_path.as_uri()
    for inference_id in ("a", "b"):
        table = request_parts(
            [{"inference_id": inference_id, "time": T0, "records": [{}], "predictions": [1]}]
        )
        [uri] = capture.write_spool(root, "churn", table)
    folder = Path(uri.removeprefix("file://")).parent
    names = sorted(p.name for p in folder.iterdir())
    real = capture._read_spool

    def flaky(fs: object, path: str) -> object:
        if path.endswith(Path(uri).name):
            raise OSError(5, "Input/output error")
        return real(fs, path)

    monkeypatch.setattr(capture, "_read_spool", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        capture.compact_capture(root, "churn")
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == names
    assert capture.compact_capture(root, "churn")["spooled"] == 2
    assert sorted(read_capture(root, "churn")["inference_id"]) == ["a", "b"]


def test_spool_compacts_on_s3(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/platform"
    for inference_id in ("a", "b"):
        table = request_parts(
            [{"inference_id": inference_id, "time": T0, "records": [{}], "predictions": [1]}]
        )
        capture.write_spool(root, "churn", table)
    before = read_capture(root, "churn")
    assert capture.compact_capture(root, "churn") == {
        "spooled": 2,
        "requests": 2,
        "parts": 1,
        "removed": 2,
        "parts_refused": [],
    }
    fs, base = capture.filesystem(capture.kind_uri(root, CAPTURE, "churn"))
    names = [path.rsplit("/", 1)[-1] for path in fs.find(base)]
    assert len(names) == 1 and names[0].startswith("compacted-"), names
    assert same_rows(read_capture(root, "churn"), before)


def test_a_broken_request_part_is_named(tmp_path: Path) -> None:
    root = tmp_path.as_uri()
    table = request_parts([{"inference_id": "r1", "time": T0, "records": [{}], "predictions": [1]}])
    table = table.set_column(
        table.schema.get_field_index("response"), "response", pa.array([b"{"], pa.binary())
    )
    [uri] = write_parts(root, CAPTURE, "churn", table)
    with pytest.raises(MonitoringError, match=r"\.parquet: captured request 'r1'") as caught:
        read_capture(root, "churn")
    assert uri.rsplit("/", 1)[-1] in str(caught.value)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(MonitoringError, match=r"lack column.*latency_ms"):
        write_parts(tmp_path.as_uri(), CAPTURE, "m", capture_rows([]).drop(["latency_ms"]))


def test_labels_are_checked_with_where_and_what() -> None:
    with pytest.raises(MonitoringError, match=r"feedback\[1\]: give inference_id"):
        labels_table(
            [{"inference_id": "x", "label": 1}, {"label": 0}], source="api", where="feedback"
        )
    with pytest.raises(MonitoringError, match=r"labels\[0\]\.label: label 'maybe'.*'no', 'yes'"):
        labels_table([{"entity_key": "c1", "label": "maybe"}], source="api", classes=["no", "yes"])
    with pytest.raises(MonitoringError, match=r"labels\[0\]\.row"):
        labels_table([{"inference_id": "x", "row": 1.5, "label": 1}], source="api")
    for when in ("yesterday", "9999-12-31T23:59:59-05:00", 1e300):
        with pytest.raises(MonitoringError, match=r"labels\[0\]\.label_time"):
            labels_table([{"inference_id": "x", "label": 1, "label_time": when}], source="a")
    table = labels_table(
        [{"inference_id": "x", "label": "yes"}, {"entity_key": 42, "label": 0, "row": None}],
        source="api",
        classes=["no", "yes"],
    )
    assert table.column("label").to_pylist() == [1.0, 0.0]
    assert table.column("row").to_pylist() == [0, None]
    assert table.column("entity_key").to_pylist() == [None, "42"]


def test_a_label_time_in_the_future_is_refused() -> None:
    """A label_time later than its receipt was stored, and an entity's label joins the
    predictions made up to its label_time, so it claimed predictions made after the outcome.
    Up to five minutes ahead is clock skew and is kept; later is refused, naming the label."""
    received = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    for when in (
        received + timedelta(minutes=5, seconds=1),
        "2026-11-28T13:00:00",  # a local time east of UTC sent without its zone
        (received + timedelta(days=365)).timestamp(),
    ):
        with pytest.raises(
            MonitoringError, match=r"^labels\[1\]\.label_time: .* is in the future"
        ) as caught:
            labels_table(
                [
                    {"inference_id": "a", "label": 1},
                    {"inference_id": "b", "label": 1, "label_time": when},
                ],
                source="api",
                received_at=received,
            )
        assert caught.value.code == "bad_time"
    skewed = received + timedelta(minutes=5)
    table = labels_table(
        [{"inference_id": "a", "label": 1, "label_time": skewed}],
        source="api",
        received_at=received,
    )
    assert table.column("label_time").to_pylist() == [skewed]


def test_an_infinite_label_is_refused_like_nan() -> None:
    """A label of "inf" (the feedback endpoint's string, JSON's Infinity, a CSV's inf) was
    stored as infinity: NaN was refused, infinity not, and one such row turns its variant's
    squared or absolute error and their intervals into inf."""
    for value in ("inf", "-Infinity", float("inf"), float("-inf")):
        with pytest.raises(MonitoringError, match=r"labels\[0\]\.label: label .* is not finite"):
            labels_table([{"inference_id": "x", "label": value}], source="api")
    with pytest.raises(MonitoringError, match=r"labels\[0\]\.label: label is NaN"):
        labels_table([{"inference_id": "x", "label": "nan"}], source="api")


def test_latest_label_wins_and_resending_is_a_no_op(tmp_path: Path) -> None:
    root = str(tmp_path)
    first = datetime.now(UTC) - timedelta(hours=1)
    for received, label in ((first, 0), (first + timedelta(minutes=1), 1)):
        table = labels_table(
            [{"inference_id": "a", "label": label}, {"entity_key": "c1", "label": label}],
            source="api",
            received_at=received,
        )
        write_parts(root, LABELS, "churn", table)
    write_labels(root, "churn", [{"inference_id": "a", "label": 1}], source="api")
    every = read_labels(root, "churn", latest=False)
    assert len(every) == 5
    latest = read_labels(root, "churn")
    assert sorted(zip(latest["inference_id"].fillna("-"), latest["label"], strict=True)) == [
        ("-", 1.0),
        ("a", 1.0),
    ]


def test_join_by_inference_id_then_entity_with_delay() -> None:
    frame = capture_rows(
        [
            {"inference_id": "a", "time": T0},
            {"inference_id": "a", "time": T0, "variant": "shadow", "served": False, "version": "2"},
            {"inference_id": "b", "row": 1, "time": T0, "entity_key": "c1"},
            {"inference_id": "c", "time": T0 + timedelta(hours=5), "entity_key": "c1"},
            {"inference_id": "d", "time": T0},
        ]
    ).to_pandas()
    labels = labels_table(
        [
            {"inference_id": "a", "label": 1, "label_time": T0 + timedelta(minutes=5)},
            {"entity_key": "c1", "label": 0, "label_time": T0 + timedelta(hours=1)},
        ],
        source="api",
        received_at=T0 + timedelta(hours=2),
    ).to_pandas()
    joined = join_labels(frame, labels)
    assert joined["label"].tolist()[:3] == [1.0, 1.0, 0.0]
    # c was predicted after the entity's outcome; d has no label
    assert joined["label"].isna().tolist()[3:] == [True, True]
    assert joined["label_delay_s"].tolist()[:3] == [7200.0, 7200.0, 7200.0]
    assert joined["label_source"].tolist()[0] == "api"
    report = label_report(joined)
    assert report["champion"]["rows"] == 4 and report["champion"]["labelled"] == 2
    assert report["champion"]["coverage"] == 0.5
    assert report["shadow"]["delay_s_p50"] == 7200.0
    assert join_labels(frame, labels.iloc[0:0])["label"].isna().all()


def test_s3_roundtrip(s3_bucket: str) -> None:
    root = f"s3://{s3_bucket}/platform"
    write_parts(root, CAPTURE, "churn", capture_rows([{"inference_id": "a", "time": T0}]))
    write_labels(root, "churn", [{"inference_id": "a", "label": 1}], source="api")
    joined = join_labels(read_capture(root, "churn"), read_labels(root, "churn"))
    assert joined["label"].tolist() == [1.0]
    assert isinstance(joined, pd.DataFrame)


def test_a_part_of_more_blocks_than_one_writev_takes_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spool parts are written from their blocks by writev, as many as it takes at a time,
    picking up where a short write stopped inside a block."""
    real = os.writev
    calls: list[int] = []

    def short_writev(descriptor: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        # at most 5 bytes a call: short writes inside blocks and across them
        first = bytes(buffers[0])[:5]
        return real(descriptor, [first])

    monkeypatch.setattr(capture.os, "writev", short_writev)
    pieces = [bytes([65 + i % 26]) * (i % 7) for i in range(capture._IOV_MAX * 2 + 5)]
    path = tmp_path / "part.spool"
    capture._write_file(str(path), pieces)
    assert path.read_bytes() == b"".join(pieces)
    assert max(calls) <= capture._IOV_MAX
    assert not list(tmp_path.glob(".*"))  # the dot-name was renamed


def spool_columns(bodies: list[bytes], answers: list[bytes]) -> dict[str, list[Any]]:
    """The columns serving hands SpoolWriter for these requests (one record each)."""
    count = len(bodies)
    return {
        "inference_id": [f"r{i}" for i in range(count)],
        "time": [int(T0.timestamp() * 1000)] * count,
        "model": ["churn"] * count,
        "version": ["1"] * count,
        "variant": ["champion"] * count,
        "served": [True] * count,
        "routing_key": [None] * count,
        "entity_field": ["customer"] * count,
        "rows": [1] * count,
        "request_size": [len(b) for b in bodies],
        "response_size": [len(a) for a in answers],
        "classes": [None] * count,
        "latency_ms": [1.0] * count,
    }


@pytest.mark.parametrize("codec", [None, "lz4_raw", "zstd", "lz4"])
def test_a_run_of_several_blocks_reads_back_in_order(tmp_path: Path, codec: str | None) -> None:
    """A run of bodies handed over as several blocks (serving held its large request bodies
    as blocks of their own in session 13; its parts stay readable) is stored block by
    block, each compressed on its own, and reads back as the requests in their order."""
    bodies = [b'{"data":[1]}', b'{"data":[' + b"2," * 5000 + b"2]}", b'{"data":[3]}']
    answers = [b'{"predictions":[0]}'] * 3
    uri = capture.SpoolWriter(tmp_path.as_uri(), codec=codec).write(
        "churn", spool_columns(bodies, answers), list(bodies), b"".join(answers)
    )
    table = capture.read_spool(uri)
    assert table["request"].to_pylist() == bodies
    assert table["response"].to_pylist() == answers


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_local_parts_are_written_past_the_page_cache_or_without_it_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local part is written with O_DIRECT from the writer's staging area in whole
    blocks, then cut to its length; a filesystem that refuses O_DIRECT (tmpfs on older
    kernels: EINVAL) gets buffered writes from then on. Both parts read back alike."""
    bodies, answers = [b'{"data":[{"x":1}]}'] * 2, [b'{"predictions":[1]}'] * 2
    columns = spool_columns(bodies, answers)
    writer = capture.SpoolWriter(tmp_path.as_uri(), codec="lz4_raw")
    direct = writer.write("churn", columns, b"".join(bodies), b"".join(answers))
    assert writer._direct is not None  # this filesystem took it
    real_open = os.open

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(capture.os, "open", no_direct)
    buffered = writer.write("churn", columns, b"".join(bodies), b"".join(answers))
    assert writer._direct is None
    first, second = (Path(uri.removeprefix("file://")) for uri in (direct, buffered))
    assert first.read_bytes() == second.read_bytes()  # cut to its length, the same bytes
    assert capture.read_spool(direct).equals(capture.read_spool(buffered))
    assert not list(first.parent.glob(".*"))  # no temporary left


def direct_parts(
    tmp_path: Path, writer: capture.SpoolWriter, sizes: list[int], answer: int = 19
) -> list[int]:
    """Write a part of a request of each of ``sizes`` bytes and one of 3, each answered by
    ``answer`` bytes (no codec), check each reads back as written and is as long as its
    buffered write; return the lengths."""
    lengths = []
    for index, size in enumerate(sizes):
        bodies = [bytes([65 + index % 26]) * size, b"xyz"]
        answers = [b"[" + b"1" * (answer - 2) + b"]"] * 2
        columns = spool_columns(bodies, answers)
        uri = writer.write("churn", columns, b"".join(bodies), b"".join(answers))
        table = capture.read_spool(uri)
        assert table["request"].to_pylist() == bodies, size
        path = Path(uri.removeprefix("file://"))
        plain = tmp_path / "plain.spool"
        capture._write_file(str(plain), [path.read_bytes()])
        assert path.stat().st_size == plain.stat().st_size  # no padding left in the part
        lengths.append(path.stat().st_size)
    return lengths


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_a_part_larger_than_the_staging_area_goes_through_it_in_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staging area keeps its size whatever a part's (a part of hundreds of MB made it
    as large, resident for the writer's life): a larger part is staged and written in
    turns, the last padded to a block; a part of exactly the area's size as well."""
    monkeypatch.setattr(capture, "_DIRECT_AREA_BYTES", 8192)
    writer = capture.SpoolWriter(tmp_path.as_uri())
    direct_parts(tmp_path, writer, [10, 5000, 30_000, 100_001])
    (length,) = direct_parts(tmp_path, writer, [20_000])
    # format 2: the answers start at a block boundary and the end mark follows them; answers
    # that make the part a whole number of areas
    answers_at = length - 2 * 19 - len(capture.SPOOL_END)
    answer = (-(answers_at + len(capture.SPOOL_END)) % 8192) // 2
    (length,) = direct_parts(tmp_path, writer, [20_000], answer)
    assert length % 8192 == 0  # the last turn fills the area: nothing padded
    assert writer._direct is not None
    assert len(writer._direct._area or b"") == 8192


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_a_short_direct_write_ending_off_a_block_is_finished_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write that returns short, off a block boundary (a filesystem falling back
    to buffered I/O for a tail), leaves an offset O_DIRECT refuses (EINVAL): the rest of
    the part is written buffered, the part kept whole, and the next part direct again."""
    import fcntl

    real_write = os.write
    calls = []

    def short_once(descriptor: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            return real_write(descriptor, data)
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        written = real_write(descriptor, memoryview(data)[:4196])
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags)
        return written

    monkeypatch.setattr(capture.os, "write", short_once)
    writer = capture.SpoolWriter(tmp_path.as_uri())
    direct_parts(tmp_path, writer, [20_000])
    assert len(calls) >= 3  # short, refused at 4196, the rest buffered
    assert writer._direct is not None
    monkeypatch.setattr(capture.os, "write", real_write)
    direct_parts(tmp_path, writer, [20_000])


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_parts_written_from_two_threads_at_once_stay_whole(tmp_path: Path) -> None:
    """One writer used by two threads at once (serving's shutdown cancels a flush whose
    thread goes on, then flushes the rest in another): the staging area is theirs in turn,
    no part gets the other's bytes."""
    import threading

    writer = capture.SpoolWriter(tmp_path.as_uri())
    failures: list[BaseException] = []

    def write(letter: bytes) -> None:
        try:
            for _ in range(40):
                bodies = [letter * 200_000, letter * 3]
                answers = [b'{"predictions":[1]}'] * 2
                uri = writer.write(
                    "churn", spool_columns(bodies, answers), b"".join(bodies), b"".join(answers)
                )
                assert capture.read_spool(uri)["request"].to_pylist() == bodies
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(letter,)) for letter in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_a_filesystem_refusing_direct_writes_only_at_write_time_gets_buffered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened with O_DIRECT, refused at the first write (EINVAL): the part is written
    buffered instead, once, with no temporary left, and later parts buffered from then on."""

    def refused(descriptor: int, data: Any) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(capture.os, "write", refused)
    writer = capture.SpoolWriter(tmp_path.as_uri())
    direct_parts(tmp_path, writer, [5000, 20_000])
    assert writer._direct is None
    assert len(list(tmp_path.rglob("*.spool"))) == 3  # two parts and the plain copy
    assert not [path for path in tmp_path.rglob(".*") if path.is_file()]


def area_of(bodies: list[bytes]) -> tuple[mmap.mmap, memoryview]:
    """Bodies copied back to back into a fresh anonymous map, as serving's areas hold them,
    and the view of the bytes used (what serving hands the writer)."""
    area = mmap.mmap(-1, 4 << 20)
    for body in bodies:
        area.write(body)
    return area, memoryview(area)[: area.tell()]


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this system")
def test_runs_lying_at_a_block_boundary_are_written_straight_from_their_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local part is framed in format 2 (each section at a 4 KiB boundary of the file,
    zeros before it); a run of bodies in page-aligned memory (serving's areas) has its
    whole blocks written with O_DIRECT from there, and only the header, the columns' JSON,
    each run's last partial block and the end mark go through the staging area. The bytes
    equal a buffered write of the same pieces, and read back as the requests."""
    bodies = [bytes([65 + i % 26]) * (3000 + 7 * i) for i in range(40)]
    answers = [b'{"predictions":[%d]}' % i for i in range(40)]
    request_area, requests = area_of(bodies)
    response_area, responses = area_of(answers)
    writer = capture.SpoolWriter(tmp_path.as_uri())
    real_write = os.write
    sources: list[tuple[Any, int]] = []

    def recording(descriptor: int, data: Any) -> int:
        sources.append((memoryview(data).obj, len(data)))
        return real_write(descriptor, data)

    monkeypatch.setattr(capture.os, "write", recording)
    uri = writer.write("churn", spool_columns(bodies, answers), requests, responses)
    monkeypatch.setattr(capture.os, "write", real_write)
    assert writer._direct is not None
    from_area = sum(size for source, size in sources if source is request_area)
    assert from_area == requests.nbytes - requests.nbytes % 4096  # its whole blocks
    staged = sum(size for source, size in sources if source is writer._direct._area)
    assert staged <= 3 * 4096 + len(orjson.dumps(spool_columns(bodies, answers)))
    path = Path(uri.removeprefix("file://"))
    stored = path.read_bytes()
    assert stored.startswith(capture.SPOOL_MAGIC_ALIGNED)
    assert stored.endswith(capture.SPOOL_END)
    requests_at = stored.index(bodies[0])
    assert requests_at % 4096 == 0
    assert stored.index(answers[0]) % 4096 == 0
    assert not stored[requests_at - 100 : requests_at].strip(b"\0")  # zeros before a run
    table = capture.read_spool(uri)
    assert table["request"].to_pylist() == bodies
    assert table["response"].to_pylist() == answers
    # the same part buffered (a filesystem refusing O_DIRECT): the same bytes
    buffered = capture.SpoolWriter((tmp_path / "buffered").as_uri())
    buffered._direct = None
    again = buffered.write("churn", spool_columns(bodies, answers), requests, responses)
    assert Path(again.removeprefix("file://")).read_bytes() == stored
    del requests, responses
    request_area.close()
    response_area.close()


def test_the_default_codec_is_none_locally_and_lz4_on_object_stores(
    tmp_path: Path, s3_bucket: str
) -> None:
    """``codec="auto"`` (serving's default): a local root's spool is uncompressed, in
    format 2; an object store's LZ4 blocks in format 1 (no padding sent). Both read back."""
    bodies, answers = [b'{"data":[{"x":1}]}'] * 3, [b'{"predictions":[1]}'] * 3
    columns = spool_columns(bodies, answers)
    local = capture.SpoolWriter(tmp_path.as_uri(), codec="auto")
    assert local.codec is None
    uri = local.write("churn", columns, b"".join(bodies), b"".join(answers))
    assert Path(uri.removeprefix("file://")).read_bytes()[:8] == capture.SPOOL_MAGIC_ALIGNED
    assert capture.read_spool(uri)["request"].to_pylist() == bodies
    remote = capture.SpoolWriter(f"s3://{s3_bucket}/platform", codec="auto")
    assert remote.codec == "lz4_raw"
    uri = remote.write("churn", columns, b"".join(bodies), b"".join(answers))
    fs, path = capture.filesystem(uri)
    assert fs.cat_file(path)[:8] == capture.SPOOL_MAGIC
    assert capture.read_spool(uri)["request"].to_pylist() == bodies


@pytest.mark.parametrize("align", [0, 3, 1 << 21])
def test_a_part_of_a_bad_alignment_is_refused(tmp_path: Path, align: int) -> None:
    """Format 2's alignment is checked (a power of two up to 1 MiB) before any offset is
    computed from it: a corrupt one refuses the part, named."""
    bodies, answers = [b'{"data":[{"x":1}]}'], [b'{"predictions":[1]}']
    writer = capture.SpoolWriter(tmp_path.as_uri())
    uri = writer.write("churn", spool_columns(bodies, answers), bodies[0], answers[0])
    path = Path(uri.removeprefix("file://"))
    stored = bytearray(path.read_bytes())
    stored[8:16] = align.to_bytes(8, "little")
    path.write_bytes(stored)
    with pytest.raises(MonitoringError, match="an alignment of"):
        capture.read_spool(uri)


def test_a_part_whose_body_lengths_add_up_through_a_negative_one_is_refused(
    tmp_path: Path,
) -> None:
    """The bodies' lengths are checked one by one, not only their sum: lengths of 30 and
    -10 add up to two bodies of 10, and would have handed the rows each other's bytes."""
    bodies, answers = [b"0123456789", b"abcdefghij"], [b"[1]", b"[2]"]
    columns = spool_columns(bodies, answers)
    columns["request_size"] = [30, -10]
    meta = orjson.dumps({"codec": None, "columns": columns})
    runs = [[memoryview(b"".join(bodies))], [memoryview(b"".join(answers))]]
    folder = tmp_path / "monitoring/capture/model=churn/date=2026-11-28"
    folder.mkdir(parents=True)
    capture._write_file(str(folder / "crafted.spool"), capture._framing(meta, runs, 1))
    with pytest.raises(MonitoringError, match="do not add up to their lengths"):
        capture.read_spool(f"file://{folder}/crafted.spool")


def test_format_1_parts_written_locally_before_are_read(tmp_path: Path) -> None:
    """Local parts written before format 2 (the sections back to back) still read."""
    bodies, answers = [b'{"data":[{"x":1}]}', b'{"data":[{"x":2}]}'], [b"[1]", b"[2]"]
    meta = orjson.dumps({"codec": None, "columns": spool_columns(bodies, answers)})
    runs = [[memoryview(b"".join(bodies))], [memoryview(b"".join(answers))]]
    folder = tmp_path / "monitoring/capture/model=churn/date=2026-11-28"
    folder.mkdir(parents=True)
    capture._write_file(str(folder / "old.spool"), capture._framing(meta, runs, 1))
    assert (folder / "old.spool").read_bytes()[:8] == capture.SPOOL_MAGIC
    table = capture.read_spool(f"file://{folder}/old.spool")
    assert table["request"].to_pylist() == bodies
    assert table["response"].to_pylist() == answers
