"""The trees compiled to C give XGBoost's own predictions, bit for bit, or refuse to build."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xgboost
from checkers import c_compiler
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_models import MODEL_KINDS, check_predict_row, train, train_kind

from mlwp.model.compiled_trees import Unsupported
from mlwp.model.native_trees import NativeTrees, _column_stride
from mlwp.model.predictor import TRIALS, BoosterPredictor, _Chooser


@pytest.fixture(autouse=True)
def _compiler() -> None:
    c_compiler()  # skipped without one, failed in CI


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("native-trees")


@pytest.mark.parametrize(("objective", "classes", "params"), MODEL_KINDS)
def test_same_output_as_xgboost(
    cache: Path, objective: str, classes: int, params: dict[str, object]
) -> None:
    model, x = train_kind(objective, classes, params)
    native = NativeTrees.build(model, cache)
    expected = model.inplace_predict(x)
    for start in (0, 1, 5, 100):
        for rows in (1, 2, 3, 8, 100, 400):
            got = native.predict(x[start : start + rows])
            assert got.dtype == np.float32
            assert got.shape == expected[start : start + rows].shape
            assert np.array_equal(got, expected[start : start + rows])
    # a column-major matrix, and float32 input, give the same
    assert np.array_equal(native.predict(np.asfortranarray(x)), expected)
    assert np.array_equal(native.predict(x.astype(np.float32)), expected)
    # float32 column by column (batch scoring's encoder's blocks), and rows of such a
    # block: read through the columns entry, no row-order copy
    by_columns = np.asfortranarray(x, dtype=np.float32)
    for start, rows in ((0, len(x)), (0, 1), (1, 2), (5, 100), (100, 300)):
        block = by_columns[start : start + rows]
        assert _column_stride(block) == len(x)
        assert np.array_equal(native.predict(block), expected[start : start + rows])


def test_only_column_major_float32_blocks_are_read_by_columns() -> None:
    block = np.asfortranarray(np.zeros((10, 3), dtype=np.float32))
    assert _column_stride(block) == 10
    assert _column_stride(block[2:7]) == 10  # rows of it
    assert _column_stride(np.ascontiguousarray(block)) == 0  # row order: read as it is
    assert _column_stride(block.astype(np.float64, order="F")) == 0  # converted first
    assert _column_stride(block[::2]) == 0  # every other row: copied first
    assert _column_stride(block[:, :1]) == 0  # one column: its rows are contiguous


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 8), data=st.data())
def test_random_models_and_rows(cache: Path, seed: int, depth: int, data: st.DataObject) -> None:
    model, _ = train("binary:logistic", seed=seed, max_depth=depth, rounds=10)
    native = NativeTrees.build(model, cache)
    values = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0])
    )
    rows = data.draw(st.lists(st.lists(values, min_size=7, max_size=7), min_size=1, max_size=9))
    matrix = np.array(rows, dtype=np.float32)
    assert np.array_equal(native.predict(matrix), model.inplace_predict(matrix))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    objective=st.sampled_from(["binary:logistic", "reg:squarederror"]),
    data=st.data(),
)
def test_predict_row_equals_predict(
    cache: Path, seed: int, objective: str, data: st.DataObject
) -> None:
    model, x = train(objective, seed=seed, rounds=10)
    native = NativeTrees.build(model, cache)
    check_predict_row(native.predict_row, native.predict, model, x, data)


@pytest.mark.parametrize("scale", [10.0, 1e3, 1e30])
def test_sigmoid_at_extreme_margins(cache: Path, scale: float) -> None:
    """Leaf values scaled up so margins reach and pass the sigmoid's cap (88.7) and
    overflow float32: still XGBoost's probabilities."""
    model, x = train("binary:logistic")
    document = json.loads(bytes(model.save_raw("json")))
    for tree in document["learner"]["gradient_booster"]["model"]["trees"]:
        leaves = [i for i, child in enumerate(tree["left_children"]) if child == -1]
        for i in leaves:
            tree["split_conditions"][i] *= scale
            tree["base_weights"][i] *= scale
    scaled = xgboost.Booster(model_file=bytearray(json.dumps(document).encode()))
    scaled.set_param({"nthread": 1})
    native = NativeTrees.build(scaled, cache)
    assert np.array_equal(native.predict(x), scaled.inplace_predict(x))


def test_predict_row_takes_one_row_of_a_one_output_model(cache: Path) -> None:
    binary, _ = train("binary:logistic")
    with pytest.raises(ValueError, match="one row of 7 values"):
        NativeTrees.build(binary, cache).predict_row([0.0] * 6)
    multiclass, _ = train("multi:softprob", 3)
    native = NativeTrees.build(multiclass, cache)
    assert not native.single_output
    with pytest.raises(ValueError, match="3 outputs"):
        native.predict_row([0.0] * 7)


def test_built_once_then_loaded_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = train("binary:logistic")
    first = NativeTrees.build(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]

    def no_build(*args: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr("mlwp.model.native_trees._compile", no_build)
    again = NativeTrees.build(model, tmp_path)
    assert again.path == first.path
    assert np.array_equal(again.predict(x), model.inplace_predict(x))
    other, _ = train("binary:logistic", seed=1)  # another model: another library
    with pytest.raises(AssertionError, match="built again"):
        NativeTrees.build(other, tmp_path)


def test_refuses_what_it_cannot_build_or_reproduce(tmp_path: Path) -> None:
    model, x = train("binary:logistic")
    with pytest.raises(Unsupported, match="does not run"):
        NativeTrees.build(model, tmp_path, compiler="/nonexistent/cc")
    with pytest.raises(Unsupported, match="building the trees failed"):
        NativeTrees.build(model, tmp_path, compiler="false")
    (tmp_path / "file").write_text("")
    with pytest.raises(Unsupported, match="building the trees failed"):
        NativeTrees.build(model, tmp_path / "file" / "cache")  # a cache it cannot create
    dart, _ = train("binary:logistic", booster="dart", rate_drop=0.3)
    with pytest.raises(Unsupported, match="dart"):
        NativeTrees.build(dart, tmp_path)
    poisson, _ = train("reg:squarederror")
    poisson.set_param({"objective": "count:poisson"})
    with pytest.raises(Unsupported, match="count:poisson"):
        NativeTrees.build(poisson, tmp_path)
    # the self-check at load: a library that scores otherwise than the booster is refused
    native = NativeTrees.build(model, tmp_path)
    other, _ = train("binary:logistic", seed=1)
    with pytest.raises(Unsupported, match="differ from XGBoost"):
        native._check(other, x[:10].astype(np.float32))


def test_booster_predictor_chooses_per_batch_size_on_the_served_rows(cache: Path) -> None:
    model, x = train("binary:logistic")
    predictor = BoosterPredictor(model)
    assert predictor.compile_trees(x[:1], native_cache=cache) == -1
    assert predictor.native is not None and predictor.row_trees is predictor.native
    # while both take turns and after the choice: XGBoost's outputs
    for _ in range(2 * TRIALS + 3):
        for size in (1, 2, 100, 400):
            assert np.array_equal(predictor.predict(x[:size]), model.inplace_predict(x[:size]))
    assert set(predictor.chooser.chosen) == {1, 2, 7, 9}

    def no_xgboost(matrix: np.ndarray) -> np.ndarray:
        raise AssertionError(f"XGBoost asked for {len(matrix)} rows")

    predictor.dense.predict = no_xgboost  # type: ignore[method-assign]
    predictor.chooser.chosen = dict.fromkeys(predictor.chooser.chosen, True)
    assert np.array_equal(predictor.predict(x[:100]), model.inplace_predict(x[:100]))
    predictor.predict(x[:8])  # a band not decided yet: both take turns, C first
    with pytest.raises(AssertionError, match="8 rows"):
        predictor.predict(x[:8])


def test_the_chooser_keeps_the_faster_side_per_band() -> None:
    def slow(matrix: np.ndarray) -> np.ndarray:
        ends = time.thread_time() + 0.002  # CPU time: the chooser's clock
        while time.thread_time() < ends:
            pass
        return matrix

    def fast(matrix: np.ndarray) -> np.ndarray:
        return matrix

    chooser = _Chooser()
    small, large = np.zeros((3, 2)), np.zeros((100, 2))
    for _ in range(TRIALS * 2):
        assert chooser.predict(slow, fast, small) is small
        assert chooser.predict(fast, slow, large) is large
    assert chooser.chosen == {2: False, 7: True}


def test_booster_predictor_falls_back_when_it_cannot_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = train("binary:logistic")
    monkeypatch.setenv("CC", "false")
    predictor = BoosterPredictor(model)
    rows = predictor.compile_trees(x[:1].astype(np.float32), native_cache=tmp_path)
    assert rows >= 0 and predictor.native is None
    assert "building the trees failed" in predictor.not_native
    for size in (1, 2, 50):
        assert np.array_equal(predictor.predict(x[:size]), model.inplace_predict(x[:size]))


def test_refuses_a_matrix_of_another_width(cache: Path) -> None:
    model, x = train("binary:logistic")
    native = NativeTrees.build(model, cache)
    wide = np.zeros((2, 14), dtype=np.float32)  # reshaped, it would score as four rows
    for matrix in (wide, x[:3, :6], x[0]):
        with pytest.raises(ValueError, match="Feature shape mismatch"):
            model.inplace_predict(matrix if matrix.ndim == 2 else matrix[None, :6])
        with pytest.raises(ValueError, match="Feature shape mismatch"):
            native.predict(matrix)


def test_no_compiler_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = train("binary:logistic")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, no gcc
    with pytest.raises(Unsupported, match="no C compiler"):
        NativeTrees.build(model, tmp_path / "cache")
    predictor = BoosterPredictor(model)
    predictor.compile_trees(x[:1].astype(np.float32), native_cache=tmp_path / "cache")
    assert predictor.native is None and "no C compiler" in predictor.not_native
    assert np.array_equal(predictor.predict(x[:20]), model.inplace_predict(x[:20]))


def test_a_cached_file_that_does_not_load_is_built_again(tmp_path: Path) -> None:
    model, x = train("binary:logistic")
    built = NativeTrees.build(model, tmp_path / "a")
    # another folder, so this process has not loaded it: a truncated copy, then not a library
    for content in (built.path.read_bytes()[:1000], b"not a library"):
        cached = tmp_path / content[:3].hex() / built.path.name
        cached.parent.mkdir()
        cached.write_bytes(content)
        again = NativeTrees.build(model, cached.parent)
        assert again.path == cached and cached.read_bytes() != content
        assert np.array_equal(again.predict(x), model.inplace_predict(x))


def test_a_build_that_takes_too_long_ends_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = train("binary:logistic", rounds=2)
    child = tmp_path / "child.pid"
    compiler = tmp_path / "slow-cc"  # like cc: a driver whose child (cc1) does the work
    compiler.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exit 0\nsleep 60 & echo $! > {child}\nwait\n'
    )
    compiler.chmod(0o755)
    monkeypatch.setattr("mlwp.model.native_trees.BUILD_SECONDS", 1)
    with pytest.raises(Unsupported, match="timed out"):
        NativeTrees.build(model, tmp_path / "cache", compiler=str(compiler))
    pid = int(child.read_text())
    for _ in range(50):
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "zombie" in status.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the compiler's child {pid} still runs")
    assert list((tmp_path / "cache").iterdir()) == []  # its temporary folder removed


def test_the_chooser_decides_each_band_once_across_threads() -> None:
    chooser = _Chooser()
    reports: list[tuple[int, bool, tuple[float, float]]] = []
    chooser.report = lambda rows, first, medians: reports.append((rows, first, medians))
    matrix = np.zeros((100, 2))

    def slow(m: np.ndarray) -> np.ndarray:
        ends = time.thread_time() + 0.0005
        while time.thread_time() < ends:
            pass
        return m

    def serve() -> None:
        for _ in range(TRIALS * 2):
            assert chooser.predict(slow, lambda m: m, matrix) is matrix

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert chooser.chosen == {7: False}
    assert len(reports) == 1 and reports[0][:2] == (64, False)
    assert reports[0][2][0] > reports[0][2][1]


def test_booster_predictor_falls_back_on_any_failure_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = train("binary:logistic")

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("split_indices")  # a model JSON of another shape, say

    monkeypatch.setattr(NativeTrees, "build", broken)
    predictor = BoosterPredictor(model)
    predictor.compile_trees(x[:1].astype(np.float32), native_cache=tmp_path)
    assert predictor.native is None and predictor.not_native == "KeyError: 'split_indices'"
    assert np.array_equal(predictor.predict(x[:20]), model.inplace_predict(x[:20]))


def test_the_self_check_covers_the_one_row_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlwp.model import native_trees

    model, _ = train("binary:logistic")
    source = native_trees._source

    def wrong_row(booster: xgboost.Booster) -> tuple[str, int, int, np.ndarray]:
        text, *rest = source(booster)
        text = text.replace("return out[0];", "return out[0] * 1.0000001f;")
        return (text, *rest)  # type: ignore[return-value]

    monkeypatch.setattr(native_trees, "_source", wrong_row)
    with pytest.raises(Unsupported, match="one-row entry differs"):
        NativeTrees.build(model, tmp_path)


def test_a_build_removes_what_killed_builds_left(tmp_path: Path) -> None:
    model, _ = train("binary:logistic", rounds=2)
    old, recent = tmp_path / "mlwp-trees-old", tmp_path / "mlwp-trees-recent"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "trees.c").write_text("/* half written */")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    NativeTrees.build(model, tmp_path)
    assert not old.exists() and recent.exists()  # recent: perhaps another process's build


def test_the_c_trees_attach_later_while_threads_predict(tmp_path: Path) -> None:
    # serving: compile_trees(build=False) at load, build_native in the background
    model, x = train("binary:logistic")
    rows = x.astype(np.float32)
    predictor = BoosterPredictor(model)
    predictor.compile_trees(rows[:1], native_cache=tmp_path, build=False)
    assert predictor.native is None and predictor.native_pending
    assert predictor.not_native == "not built yet"
    assert not list(tmp_path.glob("trees-*.so"))  # nothing built at load
    expected = {size: model.inplace_predict(rows[:size]) for size in (1, 2, 5, 50)}
    before = {size: predictor.predict(rows[:size]) for size in expected}
    row_before = predictor.row_trees  # the Python trees (or None: XGBoost)

    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[bool] = []

    def serve() -> None:
        try:
            while not stop.is_set():
                for size, want in expected.items():
                    assert np.array_equal(predictor.predict(rows[:size]), want)
                trees = predictor.row_trees
                if trees is not None:
                    assert np.float32(trees.predict_row(rows[0].tolist())) == expected[1][0]
                seen.append(predictor.native is not None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.05)
        assert predictor.build_native(tmp_path)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert not predictor.native_pending and predictor.not_native == ""
    assert predictor.native is not None and predictor.row_trees is predictor.native
    assert predictor.row_trees is not row_before
    assert False in seen and True in seen  # predicted before and after the switch
    for size, want in before.items():
        assert np.array_equal(want, expected[size])
        assert np.array_equal(predictor.predict(rows[:size]), want)
    # and a second version of the same model loads it from the cache at once
    again = BoosterPredictor(model)
    assert again.compile_trees(rows[:1], native_cache=tmp_path, build=False) == -1
    assert again.native is not None and not again.native_pending


def test_a_later_build_that_fails_keeps_what_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = train("binary:logistic")
    rows = x.astype(np.float32)
    predictor = BoosterPredictor(model)
    served = predictor.compile_trees(rows[:1], native_cache=tmp_path, build=False)
    compiled = predictor.compiled
    monkeypatch.setenv("CC", "false")
    assert not predictor.build_native(tmp_path)
    assert predictor.native is None and not predictor.native_pending
    assert "building the trees failed" in predictor.not_native
    assert predictor.compiled is compiled and predictor.compiled_rows == served
    for size in (1, 2, 50):
        assert np.array_equal(predictor.predict(rows[:size]), model.inplace_predict(rows[:size]))
