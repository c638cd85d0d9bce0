"""Micro-benchmark: a prediction body's JSON to the feature matrix, in process.

The usual path (``orjson.loads``, then ``Preprocessing.transform_records``: the record
encoder record by record or a field at a time) against ``mlwp.model.json_records`` (msgspec
decodes the records into typed structs, then ``JsonRecords.matrix``), on the churn model
bench/serving serves (100 rounds, depth 5) and the same telco rows, per batch size. Both
give the same matrix, checked bit for bit before timing. One thread, best of 7 interleaved
runs; under a minute.

    .venv/bin/python bench/serving/encoder.py [--rows 1 10 100 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]


def _telco() -> Any:
    spec = importlib.util.spec_from_file_location("telco", REPO / "tests" / "serving" / "telco.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _time(pre: Any, decoder: Any, body: bytes, number: int) -> dict[str, float]:
    """Each way's best time per call (µs), after checking both give the same matrix."""
    parsed = orjson.loads(body)["data"]
    decoded, _ = decoder.decode(body, "data", ("routing_key",))
    usual = pre.transform_records(orjson.loads(body)["data"])
    assert decoder.matrix(decoded).tobytes() == usual.tobytes()
    timed: dict[str, Callable[[], Any]] = {
        "orjson.loads": lambda: orjson.loads(body),
        "transform": lambda: pre.transform_records(parsed),
        "usual": lambda: pre.transform_records(orjson.loads(body)["data"]),
        "msgspec": lambda: decoder.decode(body, "data", ("routing_key",)),
        "matrix": lambda: decoder.matrix(decoded),
        "json_records": lambda: decoder.matrix(decoder.decode(body, "data", ("routing_key",))[0]),
    }
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(7):  # interleaved: a stall of the shared host hits one run of each
        for name, call in timed.items():
            best[name] = min(best[name], timeit.timeit(call, number=number) / number * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 10, 100, 1000])
    args = parser.parse_args()
    from mlwp import model as mlwp_model

    telco = _telco()
    with tempfile.TemporaryDirectory() as work:
        root = telco.train_model_dir(Path(work) / "model", rounds=100, max_depth=5)
        model = mlwp_model.load(root)
    pool = telco.sample_records(max(args.rows))
    print(model.tune_encoder(pool[0]))  # as a service does at load
    pre = model.preprocessing
    decoder = pre.json_records
    assert decoder is not None
    print(
        f"{'rows':>5} | {'orjson.loads':>12} | {'transform':>9} | {'usual':>9} | "
        f"{'msgspec':>9} | {'matrix':>9} | {'json_records':>12} | usual / json_records"
    )
    for rows in args.rows:
        best = _time(pre, decoder, orjson.dumps({"data": pool[:rows]}), max(20, 2000 // rows))
        cells = " | ".join(f"{value:9.1f}" for value in best.values())
        print(f"{rows:>5} | {cells} | {best['usual'] / best['json_records']:.2f}x")
    print("(microseconds per call)")


if __name__ == "__main__":
    main()
