"""Repeated in-place prediction of one XGBoost booster on small dense matrices.

``Booster.inplace_predict`` is made for occasional large batches: every call re-encodes its
arguments as JSON, re-checks the input type against a dozen libraries, and passes no proxy
DMatrix, so XGBoost builds a new one, whose context reads the cgroup CPU quota from ``/sys``
(two file opens per call). For a 1-row request that overhead is most of the prediction
(about 250 of 300 µs measured here). :class:`DensePredictor` calls the same C entry point,
``XGBoosterPredictFromDense``, with the arguments encoded once and one proxy DMatrix per
thread (the proxy holds the input of the call in flight, so threads cannot share it).

The results are the booster's own, bit for bit (a test compares them with
``inplace_predict`` for every objective). If this XGBoost build lacks the C entry points,
the predictor falls back to ``inplace_predict``.

:class:`BoosterPredictor` adds :mod:`mlwp.model.compiled_trees` for the smallest batches, where
the ~20 µs that XGBoost spends before looking at a tree is most of the prediction, and
:mod:`mlwp.model.native_trees` (the trees compiled to C, where a C compiler is at hand) for
every batch when given a folder to build it in.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.model.compiled_trees import CompiledTrees, Unsupported
from mlwp.model.native_trees import NativeTrees, NotBuilt

if TYPE_CHECKING:
    import xgboost

Array = np.ndarray[Any, Any]
Predict = Callable[[Array], Array]


class DensePredictor:
    """``predict(matrix)`` = ``booster.inplace_predict(matrix)``, with less per-call work."""

    def __init__(self, booster: xgboost.Booster) -> None:
        self.booster = booster
        self._local = threading.local()
        self._entry: Any = None
        try:
            from xgboost import core

            self._lib = core._LIB  # the ctypes handle of libxgboost (the documented C API)
            self._check = core._check_call
            self._ulong = ctypes.c_uint64  # XGBoost's bst_ulong
            self._args = core.make_jcargs(
                type=0,
                training=False,
                iteration_begin=0,
                iteration_end=0,
                missing=float("nan"),
                strict_shape=False,
                cache_id=0,
            )
            self._entry = self._lib.XGBoosterPredictFromDense
        except (ImportError, AttributeError):  # another XGBoost layout: use the public call
            pass

    def predict(self, matrix: Array) -> Array:
        """Raw booster output (float32; probabilities for binary and multiclass)."""
        if self._entry is None:
            return np.asarray(self.booster.inplace_predict(matrix))
        data = matrix
        if not _readable_in_place(data):
            data = np.ascontiguousarray(data, dtype=np.float32)
        interface = _array_interface(data)
        proxy: _Proxy | None = getattr(self._local, "proxy", None)
        if proxy is None:
            proxy = self._local.proxy = _Proxy(self._lib, self._check, self._ulong)
        self._check(
            self._entry(self.booster.handle, interface, self._args, proxy.handle, *proxy.outputs)
        )
        dimensions = proxy.shape[: proxy.dims.value]  # a list of ints
        count = math.prod(dimensions)
        # the buffer belongs to the booster's thread-local cache: copy it out now
        copied = ctypes.string_at(proxy.preds, count * 4) if count else b""
        return np.frombuffer(copied, dtype=np.float32).reshape(dimensions)


class _Proxy:
    """One XGBoost proxy DMatrix, freed with its owner (the thread's local storage), and the
    output arguments of the calls made with it (XGBoost writes them on every call; made once
    per thread, not per call: 3 ctypes objects and 3 ``byref`` s)."""

    def __init__(self, lib: Any, check: Any, ulong: Any) -> None:
        self.handle = ctypes.c_void_p()
        self._lib = lib
        check(lib.XGProxyDMatrixCreate(ctypes.byref(self.handle)))
        self.shape = ctypes.POINTER(ulong)()
        self.dims = ulong()
        self.preds = ctypes.POINTER(ctypes.c_float)()
        self.outputs = (ctypes.byref(self.shape), ctypes.byref(self.dims), ctypes.byref(self.preds))

    def __del__(self) -> None:
        if self.handle:
            self._lib.XGDMatrixFree(self.handle)


def _readable_in_place(data: Array) -> bool:
    """Whether XGBoost can read ``data`` as it is: float32, C-contiguous, or a 2-d block whose
    strides are positive whole values (column-major, and rows of it: batch scoring predicts
    halves of the encoder's column-major block, see ``mlwp.data.batch_scoring``)."""
    if data.dtype != np.float32:
        return False
    if data.flags.c_contiguous:
        return True
    return data.ndim == 2 and all(s > 0 and s % data.itemsize == 0 for s in data.strides)


def _array_interface(data: Array) -> bytes:
    """The ``__array_interface__`` JSON XGBoost reads: float32, C-contiguous or strided (a
    column-major block is read through its strides, as ``inplace_predict`` passes it: no
    transposing copy; XGBoost predicts as fast from it)."""
    pointer = data.__array_interface__["data"][0]
    rows, columns = data.shape if data.ndim == 2 else (data.shape[0], 1)
    if data.ndim == 2 and not data.flags.c_contiguous:  # Fortran order, or rows of it
        strides = b"[%d,%d]" % data.strides
    else:
        strides = b"null"
    return b'{"data":[%d,false],"shape":[%d,%d],"typestr":"<f4","version":3,"strides":%s}' % (
        pointer,
        rows,
        columns,
        strides,
    )


# batches each side scores per size band before the faster one keeps the band
TRIALS = 16


class _Chooser:
    """Which of two predictors with identical outputs scores a batch, per band of batch
    sizes (1, 2-3, 4-7, 8-15, ...): the first batches of a band alternate between them,
    timed by the thread's CPU clock, and after ``trials`` each (:data:`TRIALS`) the one with
    the lower median keeps the band. The trees compiled to C are faster than XGBoost's
    predictor on models whose splits a CPU predicts well (the churn model: 19 against 98 µs
    for 100 rows) and slower where rows take each side at random (a model of continuous
    noise: 306 against 234 µs); only the rows actually served tell which, and a probe at
    load misleads (the model's own threshold rows reversed that model's verdict), so the
    traffic decides."""

    def __init__(self, trials: int = TRIALS) -> None:
        self.trials = trials
        self.chosen: dict[int, bool] = {}  # band -> the first predictor won
        self._times: dict[int, tuple[list[float], list[float]]] = {}
        # the trials' bookkeeping (serving scores on the event loop and on pool threads at
        # once): each band decided once, from exactly ``trials`` batches a side
        self._lock = threading.Lock()
        # called once per decided band: (band's smallest batch, first won, the two medians
        # in seconds); serving logs it (the choice is otherwise invisible to an operator)
        self.report: Callable[[int, bool, tuple[float, float]], None] | None = None

    def predict(self, first: Predict, second: Predict, matrix: Array) -> Array:
        band = matrix.shape[0].bit_length()
        chosen = self.chosen.get(band)
        if chosen is not None:
            return first(matrix) if chosen else second(matrix)
        with self._lock:
            times = self._times.setdefault(band, ([], []))
            use_first = len(times[0]) <= len(times[1])
        # the thread's CPU clock: the other requests' work does not count, a pause for the
        # GIL neither; a GC pause or a cold cache is one trial of 16, the median ignores it
        started = time.thread_time()
        result = first(matrix) if use_first else second(matrix)
        spent = time.thread_time() - started
        decided, medians = None, (0.0, 0.0)
        with self._lock:
            if band in self.chosen:  # decided meanwhile by another thread
                return result
            times[0 if use_first else 1].append(spent)
            if min(len(times[0]), len(times[1])) >= self.trials:
                medians = statistics.median(times[0]), statistics.median(times[1])
                decided = self.chosen[band] = medians[0] <= medians[1]
                del self._times[band]
        if decided is not None and self.report is not None:
            self.report(1 << (band - 1) if band else 0, decided, medians)
        return result


class BoosterPredictor:
    """The booster's predictions: XGBoost's C predictor, and once :meth:`compile_trees` has
    run (serving runs it at load; batch jobs never need it) either the trees compiled to C,
    for the batch sizes where the served rows show them faster (:class:`_Chooser`), or the
    trees compiled to Python for batches of at most ``compiled_rows`` rows."""

    def __init__(self, booster: xgboost.Booster) -> None:
        self.booster = booster
        self.dense = DensePredictor(booster)
        self.native: NativeTrees | None = None
        self.not_native = "not built"
        # compile_trees(build=False) found no library in the cache: build_native builds it
        self.native_pending = False
        self.chooser = _Chooser()
        self.compiled: CompiledTrees | None = None
        self.compiled_rows = 0
        self.not_compiled = "not compiled"

    def predict(self, matrix: Array) -> Array:
        """Raw booster output (float32; probabilities for binary and multiclass)."""
        # each attribute read once: build_native may attach the C trees meanwhile (one
        # assignment), and a call sees them or not, never half
        native = self.native
        if native is not None:
            return self.chooser.predict(native.predict, self.dense.predict, matrix)
        compiled = self.compiled
        if compiled is not None and matrix.shape[0] <= self.compiled_rows:
            return compiled.predict(matrix)
        return self.dense.predict(matrix)

    @property
    def row_trees(self) -> NativeTrees | CompiledTrees | None:
        """What scores a single row of Python floats (``predict_row``), if anything: the C
        trees when built (one row: 0.7 µs where the Python trees take 5.6 and XGBoost
        about 30, on the churn model; a single row leaves the CPU little to mispredict)."""
        native = self.native
        return native if native is not None else self.compiled

    def compile_trees(
        self, sample: Array, native_cache: Path | None = None, build: bool = True
    ) -> int:
        """Compile the trees: to C in ``native_cache`` when given (they then score the
        one-row path and, where faster, the batches; returns -1); else, or when that fails
        (``not_native`` says why), to Python, kept for the batch sizes where they beat
        XGBoost, timed on one ``sample`` row (the results are identical either way, so the
        timing only decides the speed). Returns that batch size; 0 when XGBoost stays
        faster or the booster cannot be compiled (``not_compiled`` says why).

        With ``build=False`` the C trees are only loaded from the cache; when they are not
        there ``native_pending`` is set and the Python trees or XGBoost serve until
        :meth:`build_native` (serving runs it in the background) attaches them."""
        if native_cache is not None and self.load_native(native_cache, build=build):
            return -1
        try:
            compiled = CompiledTrees.compile(self.booster)
        except Unsupported as exc:
            self.not_compiled = str(exc)
            return 0
        row = np.ascontiguousarray(sample[:1], dtype=np.float32)
        # each side's best of a few short runs: a one-off stall must not decide
        dense = min(timeit.repeat(lambda: self.dense.predict(row), number=20, repeat=5))
        mine = min(timeit.repeat(lambda: compiled.predict(row), number=20, repeat=5))
        # a batch costs the compiled trees about n times one row, XGBoost barely more
        self.compiled_rows = int(dense / mine) if mine > 0 else 0
        self.compiled = compiled if self.compiled_rows else None
        self.not_compiled = "" if self.compiled_rows else "XGBoost is faster for one row"
        return self.compiled_rows

    def load_native(
        self, native_cache: Path, build: bool = True, trials: int | None = None
    ) -> bool:
        """Load the C trees from ``native_cache``, built there first unless they are cached
        already or ``build`` is False (then ``native_pending`` is set when they are not
        there), and let them score each band of batch sizes where the batches show them
        faster than XGBoost (after ``trials`` batches a side, :data:`TRIALS` unless given:
        batch scoring's batches of thousands of rows need fewer). False, with
        ``not_native`` saying why, when they cannot be had; XGBoost then scores."""
        try:
            native = NativeTrees.build(self.booster, native_cache, build=build)
        except NotBuilt as exc:
            self.native_pending = True
            self.not_native = str(exc)
            return False
        except Unsupported as exc:
            self.not_native = str(exc)
            return False
        except Exception as exc:
            self.not_native = f"{type(exc).__name__}: {exc}"
            return False
        if trials is not None and trials != self.chooser.trials:
            self.chooser = _Chooser(trials)
        self.not_native = ""
        # one assignment: predict and row_trees read the attribute once per call
        self.native = native
        return True

    def build_native(self, native_cache: Path) -> bool:
        """Build the C trees (after ``compile_trees(build=False)``; any thread, while other
        threads predict) and, once built and checked against XGBoost, attach them: from
        then on they score as if built at load (the per-band choice starts afresh). False,
        with ``not_native`` saying why, when they cannot be built; what serves then stays."""
        try:
            return self.load_native(native_cache)
        finally:
            self.native_pending = False
