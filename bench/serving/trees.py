"""Tree evaluation: mlwp's predictors against Treelite (GTIL) and TL2cgen-compiled C (issue #18).

On the benchmark's churn model (100 trees of depth 5, trained on the telco data) and its
encoded rows, per batch size (1 and 100 rows), one thread each: XGBoost's C predictor as the
service calls it (``mlwp.model.predictor.DensePredictor``), the trees compiled to Python
(``mlwp.model.compiled_trees``) and to C by mlwp (``mlwp.model.native_trees``, built with the
system's ``cc``), Treelite's GTIL predictor and TL2cgen's C code compiled with gcc and loaded
as a shared library. It prints how many of 1,000 rows each one scores other than
XGBoost (the service needs 0: bit-identical), then microseconds per call and the ratio to
XGBoost. Treelite and TL2cgen are not in the project's lock (see docs/serving.md, "Runtime
choices"); run it with them added for the run only:

    uv run --with treelite==4.8.1 --with tl2cgen==1.0.0 python bench/serving/trees.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    import tl2cgen
    import treelite

    from mlwp import model as mlwp_model
    from mlwp.model.compiled_trees import CompiledTrees
    from mlwp.model.native_trees import NativeTrees
    from mlwp.model.predictor import DensePredictor

    spec = importlib.util.spec_from_file_location("telco", REPO / "tests" / "serving" / "telco.py")
    telco = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(telco)  # type: ignore[union-attr]
    work = Path(tempfile.mkdtemp(prefix="mlwp-trees-"))
    model = mlwp_model.load(telco.train_model_dir(work / "model", rounds=100, max_depth=5))
    booster = model.booster
    booster.set_param({"nthread": 1})
    rows = np.ascontiguousarray(model.transform(telco.sample_records(1000)), dtype=np.float32)

    started = time.perf_counter()
    forest = treelite.frontend.from_xgboost(booster)
    converted = time.perf_counter() - started
    started = time.perf_counter()
    library = work / "trees.so"
    tl2cgen.export_lib(forest, toolchain="gcc", libpath=str(library), nthread=1)
    built = time.perf_counter() - started
    native = tl2cgen.Predictor(str(library), nthread=1)
    print(f"treelite conversion {converted * 1000:.0f} ms, tl2cgen C build (gcc) {built:.1f} s")

    predictors: dict[str, Any] = {
        "xgboost": DensePredictor(booster).predict,
        "compiled_trees": CompiledTrees.compile(booster).predict,
        "native_trees": NativeTrees.build(booster, work / "native").predict,
        "treelite-gtil": lambda x: treelite.gtil.predict(forest, x, nthread=1),
        "tl2cgen": lambda x: native.predict(tl2cgen.DMatrix(x)),
    }
    expected = np.asarray(booster.inplace_predict(rows))
    print("\nrows of 1,000 scored other than XGBoost (bit for bit; largest difference):")
    for name, predict in predictors.items():
        got = np.asarray(predict(rows)).reshape(expected.shape)
        differ = np.count_nonzero(got != expected)
        print(f"  {name:<16} {differ:>5}   {np.abs(got - expected).max():.3g}")

    print(f"\n  {'batch':>5}  " + "".join(f"{name:>16}" for name in predictors))
    for batch in (1, 100):
        x = np.ascontiguousarray(rows[:batch])
        number = 2000 if batch == 1 else 200
        micros = {
            name: min(timeit.repeat(lambda p=predict, x=x: p(x), number=number, repeat=5))
            / number
            * 1e6
            for name, predict in predictors.items()
        }
        print(f"  {batch:>5}  " + "".join(f"{micros[n]:>13.1f} us" for n in predictors))
        base = micros["xgboost"]
        print("  x xgb  " + "".join(f"{base / micros[n]:>16.2f}" for n in predictors), flush=True)


if __name__ == "__main__":
    main()
