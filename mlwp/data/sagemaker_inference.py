"""mlwp's inference handler for SageMaker's framework containers (Batch Transform).

SageMaker's XGBoost framework container serves ``GET /ping`` and ``POST /invocations`` on
port 8080 itself; with ``SAGEMAKER_PROGRAM=mlwp_inference.py`` it imports that script from
the source tarball and calls its four functions for each request:

``model_fn(model_dir)``                   once: the mlwp model unpacked from model.tar.gz;
``input_fn(body, content_type)``          the request body, a whole Parquet partition;
``predict_fn(data, model)``               the partition scored in chunks of MLWP_CHUNK_ROWS
                                          with :mod:`mlwp.data.batch_scoring`, the code the mapped
                                          local tasks run (same preprocessing, same rules);
``output_fn(prediction, accept)``         the scored rows as Parquet: the columns MLWP_OUTPUT
                                          says (the keys, or ``row``, the position in the body;
                                          or every input column) plus ``prediction`` and
                                          ``probability_<class>``.

Memory per request: the request body, the response body and one chunk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlwp.model import Model

PARQUET = "application/x-parquet"
CHUNK_ROWS_VARIABLE = "MLWP_CHUNK_ROWS"
OUTPUT_VARIABLE = "MLWP_OUTPUT"  # JSON: {"keys": [...], "join_input": false}
DEFAULT_CHUNK_ROWS = 65_536


class InferenceRequestError(MlwpError):
    """A request the handler cannot score (the container answers it with an error)."""

    code = "inference_request_error"


def model_fn(model_dir: str) -> Model:
    """Load the mlwp model directory SageMaker unpacked from model.tar.gz."""
    from mlwp.model import load

    return load(model_dir)


def input_fn(body: bytes, content_type: str) -> pq.ParquetFile:
    """Open the request body as a Parquet file (read one chunk at a time by predict_fn)."""
    import pyarrow.parquet as pq

    if content_type.split(";", maxsplit=1)[0].strip() != PARQUET:
        raise InferenceRequestError(
            f"content type {content_type!r} is not supported: mlwp's handler reads "
            f"{PARQUET} (one dataset partition per request)"
        )
    return pq.ParquetFile(io.BytesIO(body))


def predict_fn(data: pq.ParquetFile, model: Model) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema and the scored chunks (a generator: scored while written)."""
    import json

    from mlwp.data.batch_scoring import Output, OutputColumnsError, read_columns, score_stream

    chunk_rows = int(os.environ.get(CHUNK_ROWS_VARIABLE) or DEFAULT_CHUNK_ROWS)
    output = Output.of(**json.loads(os.environ.get(OUTPUT_VARIABLE) or "{}"))
    schema = data.schema_arrow
    columns = read_columns(model, schema.names, output)
    try:
        return score_stream(
            model, data.iter_batches(batch_size=chunk_rows, columns=columns), schema, output
        )
    except OutputColumnsError as exc:
        raise InferenceRequestError(exc.message) from exc


def output_fn(prediction: tuple[pa.Schema, Iterator[pa.RecordBatch]], accept: str) -> bytes:
    """Write the scored chunks as one Parquet file, the response body."""
    import pyarrow.parquet as pq

    if accept.split(";", maxsplit=1)[0].strip() not in (PARQUET, "*/*"):
        raise InferenceRequestError(
            f"accept {accept!r} is not supported: mlwp's handler answers {PARQUET}"
        )
    schema, batches = prediction
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return buffer.getvalue()


def transform(body: bytes, model: Any, content_type: str = PARQUET, accept: str = PARQUET) -> bytes:
    """One request through the four functions, in the container's order."""
    return output_fn(predict_fn(input_fn(body, content_type), model), accept)
