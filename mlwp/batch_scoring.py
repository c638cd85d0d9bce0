"""Score a dataset partition in bounded chunks with a loaded model (batch prediction at scale).

Each chunk (an Arrow record batch of ``chunk_rows`` rows) goes through the model's own fitted
:class:`~mlwp.preprocessing.Preprocessing` (its column path, the one serving takes for large
batches) and booster; the scores become labels and class probabilities by the rules of
:meth:`mlwp.model.Model.decide` (threshold for binary, argmax for multiclass), applied to whole
arrays (a test holds both to the same answers). The output is the input rows plus
``prediction`` and, for classifiers, ``probability_<class>`` columns: the columns the
single-task batch prediction writes. Memory is one chunk and its feature matrix, whatever the
partition's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from mlwp.model import Model

DEFAULT_CHUNK_ROWS = 65_536


def score_batch(model: Model, batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its predictions (and class probabilities) appended."""
    import pyarrow as pa

    matrix = feature_matrix(model, batch)
    if matrix.shape[0] == 0:
        raw = np.zeros((0,), dtype=np.float64)
    else:
        raw = np.asarray(model.predictor.predict(matrix), dtype=np.float64)
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    if model.objective == "regression":
        names.append("prediction")
        arrays.append(pa.array(raw.reshape(-1), type=pa.float64()))
        return pa.RecordBatch.from_arrays(arrays, names=names)
    classes = list(model.classes or [])
    if model.objective == "binary":
        positive = raw.reshape(-1)
        probabilities = np.column_stack([1.0 - positive, positive])
        chosen = (positive >= model.threshold).astype(np.int64)
    else:
        probabilities = raw.reshape(raw.shape[0], -1)
        chosen = np.argmax(probabilities, axis=1)
    labels = np.asarray(classes, dtype=object)[chosen] if classes else chosen
    names.append("prediction")
    arrays.append(pa.array(labels.tolist()))
    for index, label in enumerate(classes):
        names.append(f"probability_{label}")
        arrays.append(pa.array(probabilities[:, index], type=pa.float64()))
    return pa.RecordBatch.from_arrays(arrays, names=names)


def feature_matrix(model: Model, batch: pa.RecordBatch) -> np.ndarray[Any, Any]:
    """The model's feature matrix of a batch's raw rows.

    Arrow columns are read straight into the preprocessing's column arrays when their types
    are what the model expects (text as ``str``/None objects, numbers as float64 with NaN for
    missing): Arrow guarantees every value's type, which is what the per-value checks of the
    DataFrame path establish. Anything else (a missing column, another type, a value a step
    refuses) takes :meth:`~mlwp.preprocessing.Preprocessing.transform_frame`, which reads it
    or names the problem.
    """
    from mlwp.preprocessing import Columns, _ValueProblem

    preprocessing = model.preprocessing
    columns = _arrow_columns(preprocessing, batch, Columns)
    if columns is not None:
        try:
            out = preprocessing.transform_columns(columns)
            return out.matrix(out.names)
        except _ValueProblem:
            pass
    return preprocessing.transform_frame(batch.to_pandas())


def _arrow_columns(preprocessing: Any, batch: pa.RecordBatch, columns_type: Any) -> Any:
    import pyarrow as pa

    dtypes = {f.name: f.dtype for f in preprocessing.inputs}
    names = set(batch.schema.names)
    if any(f.required and f.name not in names for f in preprocessing.features):
        return None
    present = [f.name for f in preprocessing.features if f.name in names]
    data = {}
    for name in present:
        array = batch.column(name)
        kind = array.type
        if dtypes.get(name) == "str":
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                return None
            data[name] = array.to_numpy(zero_copy_only=False)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            data[name] = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            return None
    return columns_type(present, data, batch.num_rows)


def score_batches(model: Model, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Score each batch in turn (a generator: one chunk in memory at a time)."""
    for batch in batches:
        yield score_batch(model, batch)


def output_schema(model: Model, schema: pa.Schema) -> pa.Schema:
    """The schema of scored batches of ``schema``'s rows (for a writer opened up front)."""
    import pyarrow as pa

    fields = list(schema)
    if model.objective == "regression":
        return pa.schema([*fields, pa.field("prediction", pa.float64())])
    classes = list(model.classes or [])
    label_type = pa.array(classes).type if classes else pa.int64()
    return pa.schema(
        [
            *fields,
            pa.field("prediction", label_type),
            *(pa.field(f"probability_{label}", pa.float64()) for label in classes),
        ]
    )


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a scored batch to the partition's output schema (labels typed once for all)."""
    if batch.schema.equals(schema):
        return batch
    return batch.cast(schema)


def score_stream(
    model: Model, batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema and the scored batches of a partition whose rows have ``schema``."""
    out = output_schema(model, schema)
    return out, (conform(scored, out) for scored in score_batches(model, batches))
