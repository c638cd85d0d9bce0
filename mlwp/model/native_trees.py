"""An XGBoost tree ensemble compiled to C with the system's C compiler, for batches of rows.

XGBoost's C++ predictor spends about 40 µs per call before it looks at a tree, and walks the
trees through its generic node arrays; at 100 rows it takes about 150 µs for the churn
model. :class:`NativeTrees` writes the trees as C (one function of nested ``if`` per tree,
thresholds and leaf values as exact hexadecimal float literals), builds a shared library
with ``cc`` and calls it through ctypes: one call per batch, the GIL released while it runs
(a single row's sub-microsecond call keeps it). A matrix laid out column by column (batch
scoring's encoder writes Fortran-ordered blocks) is read as it is, each row gathered into a
row of its own in C, instead of being copied into row order first (on the benchmark's
20-tree model, 16,384 rows: the copy was a fifth of the call).

Its results are XGBoost's own, bit for bit, because the C does XGBoost's arithmetic, as
:mod:`mlwp.model.compiled_trees` does in Python (the same rules, the same probe rows):

- a split sends a row left when ``value < threshold`` in float32, a missing value (NaN) to
  the node's default branch (``!(x >= t)`` when the default is left, ``x < t`` otherwise);
- each output's margin starts from its base margin and adds the trees' leaf values in tree
  order, in float32 (C's ``float`` arithmetic on x86-64 and arm64; the library is built
  without ``-ffast-math`` and with ``-ffp-contract=off``, so nothing is reordered or fused);
- the objective's transform is XGBoost's formula with the C library's ``expf``
  (``common::Sigmoid``, ``common::Softmax``).

Treelite and TL2cgen do the same job but not bit for bit: TL2cgen adds the base score after
the trees and writes leaf values as double literals (the sum is then rounded from double),
so about 7 of 10 churn probabilities differ by a float32 step (docs/serving.md, "Runtime
choices").

:meth:`NativeTrees.build` refuses what it does not reproduce (:class:`Unsupported`, the
same limits as the Python compiler) and what it cannot build (no compiler, a failed build);
after loading the library it compares it with XGBoost on probe rows built from the model's
own thresholds (each side of every split, missing values) plus seeded random rows, and any
difference refuses it: the caller then keeps XGBoost's predictor. Libraries are cached in a
folder by a hash of their source, the compiler and the machine, so a restart loads them
without building; a cached file is loaded only whole (a trailer of its SHA-256), else rebuilt.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.model.compiled_trees import (
    MAX_DEPTH,
    Unsupported,
    _probe_rows,
    read_booster,
    tree_arrays,
)

if TYPE_CHECKING:
    import xgboost

Array = np.ndarray[Any, Any]
F32 = np.float32
# Beyond this the C gets large enough that building it takes minutes (gcc 12: 0.6 s for
# the churn model's 6,000 nodes, 3.4 s for 12,000 nodes in 1,000 trees).
MAX_NODES = 200_000
RANDOM_ROWS = 256
BUILD_SECONDS = 180
ENTRY = "mlwp_trees_predict"
COLUMNS_ENTRY = "mlwp_trees_predict_columns"
ROW_ENTRY = "mlwp_trees_predict_row"
_MARKER = b"mlwp-trees-sha256"
_TRAILER = len(_MARKER) + 32
FLAGS = ("-O2", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off", "-std=c99")


class NotBuilt(Unsupported):
    """The library is not in the cache (or does not load from it) and building was not
    asked for (``NativeTrees.build(..., build=False)``): the caller builds it later."""


class NativeTrees:
    """``predict(matrix)`` = ``booster.inplace_predict(matrix)``, evaluated by compiled C."""

    def __init__(self, library: ctypes.CDLL, path: Path, features: int, outputs: int) -> None:
        self._library = library  # kept: the function below lives in it
        self.path = path
        self.features = features
        self.outputs = outputs
        function = getattr(library, ENTRY)
        function.restype = None
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self._function = function
        columns = getattr(library, COLUMNS_ENTRY)
        columns.restype = None
        columns.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
        self._columns = columns
        # the one-row entry keeps the GIL (PyDLL: the same loaded library): it runs for
        # ~0.1 us, less than releasing costs, and a thread that gives the GIL up may wait a
        # switch interval (5 ms) or more to get it back from a busy one (measured, churn:
        # ~157 against ~123 ns a call; beside a busy Python thread 14 of 6,000 released
        # calls took over 1 ms, up to 10 ms, and none of 6,000 held ones)
        row = getattr(ctypes.PyDLL(str(path)), ROW_ENTRY)
        row.restype = ctypes.c_float
        row.argtypes = [ctypes.c_char_p]
        self._row = row
        # a row of Python floats as float32 bytes: struct's native "f" is the C cast numpy's
        # astype uses too
        self._pack_row = struct.Struct(f"{features}f").pack

    @property
    def single_output(self) -> bool:
        """Whether the model has one output (binary classification, regression)."""
        return self.outputs == 1

    def predict_row(self, row: Sequence[float]) -> float:
        """``predict`` of the one-row matrix ``[row]`` of a :attr:`single_output` model, as
        a Python float (``CompiledTrees.predict_row``'s contract: the one-record path)."""
        if len(row) != self.features or self.outputs != 1:
            raise ValueError(
                f"predict_row takes one row of {self.features} values of a one-output model "
                f"(got {len(row)} values, {self.outputs} outputs)"
            )
        value: float = self._row(self._pack_row(*row))
        return value

    def predict(self, matrix: Array) -> Array:
        """Raw output as XGBoost gives it (float32; probabilities for the classifiers): a
        vector for one output, ``(rows, outputs)`` for several."""
        stride = _column_stride(matrix)
        data = matrix if stride else np.ascontiguousarray(matrix, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.features:
            # XGBoost refuses it too; reshaping would score a wider matrix's values as rows
            raise ValueError(
                f"Feature shape mismatch, expected: {self.features}, got shape {data.shape}"
            )
        rows = data.shape[0]
        out = np.empty((rows, self.outputs) if self.outputs > 1 else rows, dtype=np.float32)
        if rows and stride:
            self._columns(data.ctypes.data, rows, stride, out.ctypes.data)
        elif rows:
            self._function(data.ctypes.data, rows, out.ctypes.data)
        return out

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        booster: xgboost.Booster,
        cache: Path,
        compiler: str | None = None,
        build: bool = True,
    ) -> NativeTrees:
        """The booster's trees as a loaded shared library, built into ``cache`` unless it is
        there already (with ``build=False`` only loaded from there, else :class:`NotBuilt`:
        serving builds in the background, see ``BoosterPredictor.build_native``); raises
        :class:`Unsupported` saying why not."""
        source, features, outputs, probes = _source(booster)
        compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise Unsupported("no C compiler (cc) to build the trees with")
        digest = hashlib.sha256(
            # the machine too: `cc --version` reads the same on x86-64 and arm64, and a
            # models folder may be shared between both
            "\n".join((source, _compiler_identity(compiler), platform.machine(), *FLAGS)).encode()
        ).hexdigest()[:24]
        path = cache / f"trees-{digest}.so"
        # dlopen of a cut-short library can end the process (SIGBUS), so a cached file is
        # loaded only whole: as this module wrote it, its digest at its end
        cached = _intact(path)
        if not cached:
            if not build:
                raise NotBuilt("not built yet")
            _compile(compiler, source, path)
        try:
            library = ctypes.CDLL(str(path))
        except OSError as exc:
            if not cached:
                raise Unsupported(f"cannot load the built trees: {exc}") from exc
            if not build:
                raise NotBuilt("not built yet (the cached library does not load)") from exc
            # a whole file that does not load here (another C library, say): built again
            _compile(compiler, source, path)
            try:
                library = ctypes.CDLL(str(path))
            except OSError as exc:
                raise Unsupported(f"cannot load the built trees: {exc}") from exc
        native = cls(library, path, features, outputs)
        native._check(booster, probes)
        return native

    def _check(self, booster: xgboost.Booster, probes: Array) -> None:
        rng = np.random.default_rng(0)
        random = rng.normal(size=(RANDOM_ROWS, self.features)).astype(np.float32)
        random[rng.random(random.shape) < 0.2] = np.nan
        signs = rng.choice(np.array([-np.inf, np.inf], dtype=np.float32), size=random.shape)
        random = np.where(rng.random(random.shape) < 0.05, signs, random)
        rows = np.concatenate([probes, random])
        expected = np.asarray(booster.inplace_predict(rows))
        # row by row, and column by column (the entry for Fortran-ordered blocks and rows
        # of them, which batch scoring's encoder writes)
        by_columns = np.asfortranarray(rows)
        for matrix in (rows, by_columns):
            for start, stop in ((0, len(rows)), (0, 1), (1, 8)):
                got, want = self.predict(matrix[start:stop]), expected[start:stop]
                if got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
                    raise Unsupported("the built trees differ from XGBoost on probe rows")
        if self.outputs == 1:  # the one-record path's own entry point, on 32 of the rows
            for i in range(0, len(rows), max(1, len(rows) // 32)):
                got_row = np.float32(self.predict_row(rows[i].tolist()))
                if not np.array_equal(got_row, expected[i], equal_nan=True):
                    raise Unsupported("the built trees' one-row entry differs from XGBoost")


def _column_stride(matrix: Array) -> int:
    """The distance in values between a column's start and the next one's, when ``matrix``
    is a float32 matrix of more than one column laid out column by column (Fortran order,
    or consecutive rows of such a block: batch scoring's encoder writes that layout); else
    0 (read row by row, after a C-ordered copy when it is not one)."""
    if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[1] < 2:
        return 0
    row, column = matrix.strides
    if row != 4 or column <= 0 or column % 4 or matrix.flags.c_contiguous:
        return 0
    return column // 4


def _intact(path: Path) -> bool:
    """Whether ``path`` is a library :func:`_compile` wrote, whole (its trailer: a marker
    and the SHA-256 of the bytes before it; the dynamic loader ignores bytes after the
    ELF's sections)."""
    try:
        data = path.read_bytes()
    except OSError:  # absent, unreadable
        return False
    body, marker, digest = data[:-_TRAILER], data[-_TRAILER:-32], data[-32:]
    return marker == _MARKER and hashlib.sha256(body).digest() == digest


def _compiler_identity(compiler: str) -> str:
    try:
        done = subprocess.run(  # the configured compiler, no shell
            [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unsupported(f"C compiler {compiler!r} does not run: {exc}") from exc
    return f"{compiler} {done.stdout.strip()}"


def _compile(compiler: str, source: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # what a build killed with its process left (a live one is killed at BUILD_SECONDS)
        stale = time.time() - 2 * BUILD_SECONDS
        for left in path.parent.glob("mlwp-trees-*"):
            if left.is_dir() and left.stat().st_mtime < stale:
                shutil.rmtree(left, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="mlwp-trees-", dir=path.parent) as work:
            c_file = Path(work) / "trees.c"
            c_file.write_text(source)
            built = Path(work) / "trees.so"
            process = subprocess.Popen(  # the configured compiler, no shell
                [compiler, *FLAGS, "-o", str(built), str(c_file), "-lm"],
                env={**os.environ, "TMPDIR": work},  # its temporary files: the cache's disk
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # its own process group: cc1 and as end with it
            )
            try:
                _, stderr = process.communicate(timeout=BUILD_SECONDS)
            except subprocess.TimeoutExpired:
                # killing cc alone would leave cc1 compiling in the background
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise
            if process.returncode != 0:
                lines = stderr.strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error" in line), lines[0])
                raise Unsupported(f"building the trees failed ({process.returncode}): {first}")
            with built.open("r+b") as library:  # the trailer _intact checks
                library.write(_MARKER + hashlib.sha256(library.read()).digest())
            # atomic: another process loading the same model sees the whole library or none
            os.replace(built, path)
    except (OSError, subprocess.SubprocessError) as exc:  # a read-only cache, a timeout
        raise Unsupported(f"building the trees failed: {exc}") from exc


def _f32(value: float) -> str:
    """An exact C float literal of ``value`` rounded to float32 (hexadecimal: no decimal
    rounding in between)."""
    v = float(F32(value))
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{v.hex()}f"


def _source(booster: xgboost.Booster) -> tuple[str, int, int, Array]:
    """The C source of ``booster``, its feature and output counts, and its probe rows."""
    model = read_booster(booster, MAX_NODES)
    trees, features, outputs, bases = model.trees, model.features, model.outputs, model.bases
    groups, transform = model.groups, model.transform

    parts = [
        "/* XGBoost trees written as C by mlwp.model.native_trees. */\n",
        "#include <float.h>\n#include <math.h>\n#include <stddef.h>\n\n",
        # float arithmetic in float: x87's extended precision (i386) would round otherwise
        "#if FLT_EVAL_METHOD != 0\n#error FLT_EVAL_METHOD is not 0\n#endif\n\n",
    ]
    for index, tree in enumerate(trees):
        body = _tree_body(tree, features)
        parts.append(f"static float t{index}(const float *x) {{\n{body}}}\n")
    # the objective's transform of one row's margins s into out
    parts.append("static void finish(float *s, float *out) {\n")
    if transform == "sigmoid":
        # common::Sigmoid: x = std::min(-x, 88.7f); 1.0f / (expf(x) + 1.0f + 1e-16f)
        parts.append(
            f"  for (int k = 0; k < {outputs}; ++k) {{\n"
            "    float m = -s[k];\n"
            "    if (88.7f < m) m = 88.7f;\n"
            "    float d = expf(m) + 1.0f + 1e-16f;\n"
            "    out[k] = 1.0f / d;\n"
            "  }\n"
        )
    elif transform == "softmax":
        # common::Softmax: expf(x - max) in float32, summed in double, divided in float32
        parts.append(
            "  float w = s[0];\n"
            f"  for (int k = 1; k < {outputs}; ++k) w = fmaxf(s[k], w);\n"
            "  double total = 0.0;\n"
            f"  for (int k = 0; k < {outputs}; ++k) {{ s[k] = expf(s[k] - w); total += s[k]; }}\n"
            f"  for (int k = 0; k < {outputs}; ++k) out[k] = s[k] / (float)total;\n"
        )
    else:
        parts.append(f"  for (int k = 0; k < {outputs}; ++k) out[k] = s[k];\n")
    parts.append("}\n\n")
    # one row's outputs, then the two entry points: a batch, and one row of a one-output
    # model (row by row: walking blocks of rows tree by tree, as XGBoost does, measured
    # slower, 24 against 19 us for the churn model's 100 rows)
    parts.append(f"static void score(const float *x, float *out) {{\n  float s[{outputs}];\n")
    parts.extend(f"  s[{k}] = {_f32(b)};\n" for k, b in enumerate(bases))
    parts.extend(f"  s[{g}] += t{i}(x);\n" for i, g in enumerate(groups))
    parts.append(
        "  finish(s, out);\n}\n\n"
        f"void {ENTRY}(const float *data, size_t rows, float *out) {{\n"
        f"  for (size_t r = 0; r < rows; ++r) score(data + r * {features}, out + r * {outputs});\n"
        "}\n\n"
        f"void {COLUMNS_ENTRY}(const float *data, size_t rows, size_t stride, float *out) {{\n"
        f"  float x[{features}];\n"
        "  for (size_t r = 0; r < rows; ++r) {\n"
        f"    for (size_t f = 0; f < {features}; ++f) x[f] = data[r + f * stride];\n"
        f"    score(x, out + r * {outputs});\n"
        "  }\n"
        "}\n\n"
        f"float {ROW_ENTRY}(const float *x) {{\n"
        f"  float out[{outputs}];\n  score(x, out);\n  return out[0];\n}}\n"
    )
    return "".join(parts), features, outputs, _probe_rows(trees, features)


def _tree_body(tree: dict[str, Any], features: int) -> str:
    """One tree as nested ``if``/``else`` returning its leaf values."""
    left, right, feature, threshold, default_left = tree_arrays(tree)
    lines: list[str] = []

    def node(i: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Unsupported(f"trees deeper than {MAX_DEPTH}")
        pad = "  " * (depth + 1)
        value = _f32(threshold[i])
        if left[i] == -1:  # a leaf: its value is stored as the split condition
            lines.append(f"{pad}return {value};\n")
            return
        # NaN fails every comparison: `!(x >= t)` sends it left, `x < t` right
        f = int(feature[i])
        if not 0 <= f < features:  # the C would read outside the row
            raise Unsupported(f"a split on feature {f} of {features}")
        x = f"x[{f}]"
        test = f"!({x} >= {value})" if default_left[i] else f"{x} < {value}"
        lines.append(f"{pad}if ({test}) {{\n")
        node(left[i], depth + 1)
        lines.append(f"{pad}}} else {{\n")
        node(right[i], depth + 1)
        lines.append(f"{pad}}}\n")

    node(0, 0)
    return "".join(lines)
