"""An XGBoost tree ensemble compiled to Python, for predictions on a few rows at a time.

Every call into XGBoost's C++ predictor costs about 20 µs before it looks at a tree: the
proxy DMatrix re-parses its device string with a freshly compiled ``std::regex`` and the
thread count is read from the CPU affinity mask on every call. Walking the 100 trees of the
churn model for one row takes XGBoost about 4 µs of that. :class:`CompiledTrees` turns the
trees into one Python function of nested conditional expressions (as Treelite turns them
into C), so a one-row prediction costs a few microseconds instead. The function unpacks the
row into one local per feature first: a split then compares a local (``x12 < 0.5``), which
costs less than an item of the list (``x[12] < 0.5``): 40 % less on the churn model.

Its results are XGBoost's own, bit for bit, because it does XGBoost's arithmetic:

- a split sends a row left when ``value < threshold`` in float32 (inputs are rounded to
  float32 first; Python compares the exact float32 values as doubles, which orders them the
  same), and a missing value (NaN) takes the node's default branch;
- leaf values are summed per output in tree order in float32, starting from the base margin
  (``numpy.add.accumulate``, cumsum's ufunc, adds float32 values one after the other);
- the objective's transform is XGBoost's formula in float32 with the C library's ``expf``
  (``common::Sigmoid``, ``common::Softmax``).

:meth:`CompiledTrees.compile` refuses what it does not reproduce (another booster than
``gbtree``, another objective, categorical splits, vector leaves, very deep or very large
ensembles), and after compiling it compares itself with XGBoost on probe rows built from the
model's own thresholds (each side of every split, and missing values); any difference, and
the model is served by XGBoost alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import xgboost

Array = np.ndarray[Any, Any]
F32 = np.float32

# Objectives whose output transform is reproduced here, by XGBoost's name.
SIGMOID = ("binary:logistic", "reg:logistic")
SOFTMAX = ("multi:softprob",)
IDENTITY = ("reg:squarederror",)
# Beyond these the Python source gets large (compiling it takes long and the function costs
# more memory than it saves time) and the nesting deep (the parser has limits).
MAX_NODES = 40_000
MAX_DEPTH = 40
PROBE_ROWS = 64
_ONE = F32(1.0)
_SIGMOID_CAP = float(F32(88.7))
# a float32 array's running sum, added in order (cumsum's ufunc, called directly)
_accumulate = np.add.accumulate
# one float to float32 bytes and back: the C cast numpy's uses too
_pack_float32, _unpack_float32 = struct.Struct("f").pack, struct.Struct("f").unpack


class Unsupported(Exception):
    """This booster is served by XGBoost itself; the message says why."""


@functools.cache
def _libm() -> Any:
    # XGBoost calls the C library's expf/logf; Python's math module has only the double ones.
    path = ctypes.util.find_library("m")
    lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    for name in ("expf", "logf"):
        function = getattr(lib, name)
        function.restype = ctypes.c_float
        function.argtypes = [ctypes.c_float]
    return lib


class CompiledTrees:
    """``predict(matrix)`` = ``booster.inplace_predict(matrix)``, evaluated in Python."""

    def __init__(
        self,
        leaves: Callable[[Sequence[float]], bytes],
        groups: list[list[int]],
        transform: str,
        features: int,
    ) -> None:
        self._leaves = leaves
        self._groups = [np.asarray(g, dtype=np.intp) for g in groups]
        self._transform = transform
        self._width = sum(len(g) for g in groups)  # the float32 values leaves() packs
        self.features = features
        self._expf = _libm().expf
        # a row of Python floats rounded to float32 and back: struct's native "f" is the
        # same C cast as numpy's (no range check: beyond float32's range is inf, as there)
        row = struct.Struct(f"{features}f")
        self._pack_row, self._unpack_row = row.pack, row.unpack

    # -- prediction ------------------------------------------------------------------------
    def predict(self, matrix: Array) -> Array:
        """Raw output as XGBoost gives it (float32; probabilities for the classifiers)."""
        rows = np.asarray(matrix, dtype=np.float32).reshape(-1, self.features).tolist()
        if len(self._groups) == 1:
            # one output, its terms in tree order: each row's float32 running sum, read from
            # the leaf values as they come (half the numpy calls of the 2-D array's cumsum)
            leaves = self._leaves
            sums = [_accumulate(np.frombuffer(leaves(row), F32))[-1] for row in rows]
            if self._transform == "sigmoid":
                return self._sigmoid(sums)
            return np.array(sums, dtype=F32)
        values = np.frombuffer(b"".join(map(self._leaves, rows)), F32).reshape(len(rows), -1)
        margins = np.stack(
            [values[:, group].cumsum(axis=1)[:, -1] for group in self._groups], axis=1
        )
        if self._transform == "sigmoid":
            return self._sigmoid(margins.reshape(-1).tolist()).reshape(margins.shape)
        if self._transform == "softmax":
            return np.stack([self._softmax(row) for row in margins])
        return margins

    @property
    def single_output(self) -> bool:
        """Whether the model has one output (binary classification, regression)."""
        return len(self._groups) == 1

    def predict_row(self, row: Sequence[float]) -> float:
        """``predict`` of the one-row matrix ``[row]`` of a :attr:`single_output` model, as
        a Python float, without a numpy array of the row or of its output (a one-row
        request's path: fewer numpy calls, see docs/serving.md). ``row`` holds
        :attr:`features` floats (the record encoder's row); each is rounded to float32 as
        numpy's cast rounds it."""
        if len(row) != self.features or len(self._groups) != 1:
            raise ValueError(
                f"predict_row takes one row of {self.features} values of a one-output model "
                f"(got {len(row)} values, {len(self._groups)} outputs)"
            )
        leaves = self._leaves(self._unpack_row(self._pack_row(*row)))
        # the float32 running sum in tree order, as predict takes it (.item: a Python float)
        total: float = _accumulate(np.frombuffer(leaves, F32)).item(-1)
        if self._transform == "sigmoid":
            return self._sigmoid_value(total)
        return total

    def _sigmoid_value(self, margin: float) -> float:
        # _sigmoid's arithmetic on Python floats: a sum or quotient of float32 values
        # computed in double and rounded to float32 is the float32 sum or quotient (double
        # has more than twice float32's precision), rounded by struct's native "f" (a C
        # cast, as numpy's)
        exp = self._expf(min(-margin, _SIGMOID_CAP))
        denominator = _unpack_float32(_pack_float32(exp + 1.0))[0]
        probability: float = _unpack_float32(_pack_float32(1.0 / denominator))[0]
        return probability

    def _sigmoid(self, margins: Sequence[Any]) -> Array:
        # common::Sigmoid: 1.0f / (expf(min(-x, 88.7f)) + 1.0f + 1e-16f). The sum of two
        # float32 values computed in double and rounded to float32 is the float32 sum, and
        # adding 1e-16f to a number >= 1 changes nothing in float32; the division is one of
        # float32 scalars (what numpy's division of the arrays does per element).
        expf, one = self._expf, _ONE
        cap = _SIGMOID_CAP
        return np.array([one / F32(expf(min(-float(m), cap)) + 1.0) for m in margins], dtype=F32)

    def _softmax(self, margins: Array) -> Array:
        # common::Softmax: expf(x - max) in float32, summed in double, divided in float32
        expf = self._expf
        exps = [expf(v) for v in (margins - margins.max()).tolist()]
        total = 0.0
        for value in exps:
            total += value
        result: Array = np.array(exps, dtype=np.float32) / F32(total)
        return result

    # -- compilation -----------------------------------------------------------------------
    @classmethod
    def compile(cls, booster: xgboost.Booster) -> CompiledTrees:
        """Compile ``booster``, or raise :class:`Unsupported` saying why not."""
        model = read_booster(booster, MAX_NODES)
        trees, features, outputs, bases = model.trees, model.features, model.outputs, model.bases
        groups_of_trees, transform = model.groups, model.transform

        # the function returns the base margins, then one leaf value per tree, packed as
        # float32 (what numpy reads without converting each Python float: a tuple through
        # np.fromiter cost five times more); the row is unpacked into locals first (a
        # local is read faster than an item of the list)
        terms = [repr(b) for b in bases] + [_tree_expression(tree) for tree in trees]
        names = "".join(f"x{i}, " for i in range(features))
        source = f"def leaves(x):\n    ({names}) = x\n    return _pack(\n"
        source += "".join(f"        {t},\n" for t in terms) + "    )\n"
        namespace: dict[str, Any] = {"_pack": struct.Struct(f"{len(terms)}f").pack}
        exec(compile(source, f"<xgboost trees: {len(trees)}>", "exec"), namespace)  # noqa: S102 - our own generated source
        groups = [
            [k] + [outputs + i for i, g in enumerate(groups_of_trees) if g == k]
            for k in range(outputs)
        ]
        compiled = cls(namespace["leaves"], groups, transform, features)
        compiled._check(booster, _probe_rows(trees, features))
        return compiled

    def _check(self, booster: xgboost.Booster, probes: Array) -> None:
        expected = np.asarray(booster.inplace_predict(probes))
        for start in range(0, len(probes), 8):
            got = self.predict(probes[start : start + 8])
            if not np.array_equal(
                got.reshape(expected[start : start + 8].shape),
                expected[start : start + 8],
                equal_nan=True,
            ):
                raise Unsupported("differs from XGBoost on probe rows")


class Ensemble(NamedTuple):
    """What both compilers read of a booster (:func:`read_booster`)."""

    transform: str  # "sigmoid", "softmax" or "identity"
    features: int
    outputs: int
    trees: list[dict[str, Any]]  # the JSON model's trees
    groups: list[int]  # each tree's output
    bases: list[float]  # each output's base margin


def read_booster(booster: xgboost.Booster, max_nodes: int) -> Ensemble:
    """The booster's trees and what scoring them takes, or :class:`Unsupported` saying why
    they cannot be compiled (an objective, booster or model shape not reproduced)."""
    config = json.loads(booster.save_config())
    objective = config["learner"]["objective"]["name"]
    if objective in SIGMOID:
        transform = "sigmoid"
    elif objective in SOFTMAX:
        transform = "softmax"
    elif objective in IDENTITY:
        transform = "identity"
    else:
        raise Unsupported(f"objective {objective!r}")
    model = json.loads(bytes(booster.save_raw("json")))["learner"]
    gbm = model["gradient_booster"]
    if gbm.get("name") != "gbtree":
        raise Unsupported(f"booster {gbm.get('name')!r} (only gbtree)")
    params = model["learner_model_param"]
    features = int(params["num_feature"])
    outputs = max(1, int(params["num_class"]))
    if int(params.get("num_target", "1")) != 1:
        raise Unsupported("multi-target model")
    trees = gbm["model"]["trees"]
    groups = [int(g) for g in gbm["model"]["tree_info"]]
    if len(groups) != len(trees) or any(not 0 <= g < outputs for g in groups):
        raise Unsupported(f"tree groups {sorted(set(groups))} for {outputs} outputs")
    if sum(len(t["left_children"]) for t in trees) > max_nodes:
        raise Unsupported(f"more than {max_nodes} nodes")
    bases = _base_margins(params["base_score"], objective, outputs)
    return Ensemble(transform, features, outputs, trees, groups, bases)


def _base_margins(raw: str, objective: str, outputs: int) -> list[float]:
    """The starting margin of each output, as XGBoost computes it from ``base_score``."""
    scores = [F32(float(v)) for v in str(raw).strip("[]").split(",") if v.strip()]
    if len(scores) == 1:
        scores *= outputs
    if len(scores) != outputs:
        raise Unsupported(f"base_score {raw!r} for {outputs} outputs")
    if objective in SIGMOID:
        # ProbToMargin of the logistic objectives: -logf(1.0f / base_score - 1.0f)
        logf = _libm().logf
        return [float(-F32(logf(float(F32(1.0) / s - F32(1.0))))) for s in scores]
    return [float(s) for s in scores]


def tree_arrays(tree: dict[str, Any]) -> tuple[list[Any], ...]:
    """A JSON tree's children, split features, thresholds (a leaf's value in its place) and
    default directions, or :class:`Unsupported` for the splits neither compiler takes."""
    if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise Unsupported("vector-leaf trees")
    if tree.get("categories_nodes") or any(int(t) != 0 for t in tree.get("split_type", [])):
        raise Unsupported("categorical splits")
    return (
        tree["left_children"],
        tree["right_children"],
        tree["split_indices"],
        tree["split_conditions"],
        tree["default_left"],
    )


def _tree_expression(tree: dict[str, Any]) -> str:
    """One tree as a nested conditional expression over the row ``x``."""
    left, right, feature, threshold, default_left = tree_arrays(tree)

    def node(i: int, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise Unsupported(f"trees deeper than {MAX_DEPTH}")
        value = repr(float(F32(threshold[i])))
        if left[i] == -1:  # a leaf: its value is stored as the split condition
            return value
        # NaN fails every comparison: `not (x >= t)` sends it left, `x < t` right
        x = f"x{feature[i]}"
        test = f"not {x} >= {value}" if default_left[i] else f"{x} < {value}"
        return f"({node(left[i], depth + 1)} if {test} else {node(right[i], depth + 1)})"

    return node(0, 0)


def _probe_rows(trees: Sequence[dict[str, Any]], features: int) -> Array:
    """Rows that take both sides of many splits: each feature gets values at, just below
    and just above its thresholds, and missing values."""
    rng = np.random.default_rng(0)
    candidates: list[list[float]] = [[math.nan] for _ in range(features)]
    for tree in trees:
        for i, f in enumerate(tree["split_indices"]):
            if tree["left_children"][i] != -1:
                t = F32(tree["split_conditions"][i])
                below, above = np.nextafter(t, F32(-np.inf)), np.nextafter(t, F32(np.inf))
                candidates[f].extend((float(t), float(below), float(above)))
    probes = np.empty((PROBE_ROWS, features), dtype=np.float32)
    for f, values in enumerate(candidates):
        probes[:, f] = rng.choice(np.asarray(values, dtype=np.float32), size=PROBE_ROWS)
    return probes
