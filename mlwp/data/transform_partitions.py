"""The transform of a partitioned dataset: fit on a seeded sample, apply one partition at a time.

Fitting (medians, means, modes, categories, scales) needs the whole column, which does not
fit in memory; a uniform sample does, and its statistics estimate the whole's (a median from
100,000 rows is within a fraction of a percent of the population's). So:

1. **Fit** on a seeded Bernoulli sample of about ``sample_rows`` rows drawn from every
   partition (each row kept with probability ``sample_rows / rows``; the same data and seed give
   the same sample). :func:`mlwp.data.transform.run_transform` fits the preprocessing on the
   sample's training rows, exactly as on a small dataset. The sample's size, seed and the
   dataset's row count are recorded with the result (lineage).
2. **Apply** per partition: each partition runs the dataset steps (python, filter, split)
   alone, the split seeded with ``seed + partition index`` so partitions do not share a
   permutation; its rows of each split are appended to that split's partitioned dataset.

The saved preprocessing is the same :class:`~mlwp.model.preprocessing.Preprocessing` JSON serving
loads. What is refused: nothing new, but a ``python`` step sees one partition at a time, and a
``filter`` placed after a fitted step compares with that partition's own fit (docs/scale.md).
Memory: the sample plus one partition.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.data.partitions import PartitionedReader, commit_staged, stage_part
from mlwp.data.transform import SPLITS, TransformError, run_transform

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.data.storage import DatasetRef, Storage
    from mlwp.model.preprocessing import Preprocessing

DEFAULT_SAMPLE_ROWS = 200_000
DEFAULT_SAMPLE_SEED = 16


@dataclass
class PartitionedTransform:
    """The split datasets written, the preprocessing fitted on the sample, and its lineage."""

    splits: dict[str, DatasetRef]
    preprocessing: Preprocessing
    rows_in: int
    rows_filtered: int
    fit_sample: dict[str, Any] = field(default_factory=dict)


def seeded_sample(
    reader: PartitionedReader, rows: int, seed: int = DEFAULT_SAMPLE_SEED
) -> pd.DataFrame:
    """About ``rows`` rows drawn uniformly from every partition (each kept independently)."""
    import pyarrow as pa

    total = sum(p.rows for p in reader.partitions)
    fraction = 1.0 if total <= rows else rows / total
    rng = np.random.default_rng(seed)
    kept = []
    for partition in reader.partitions:
        for batch in reader.batches(partition):
            keep = rng.random(batch.num_rows) < fraction
            kept.append(batch.filter(pa.array(keep)))
    return pa.Table.from_batches(kept).to_pandas()


def _with_split_seed(steps: Sequence[dict[str, Any]], offset: int) -> list[dict[str, Any]]:
    out = []
    for step in steps:
        copy = dict(step)
        if copy.get("op") == "split":
            copy["seed"] = int(copy.get("seed", 42)) + offset
        out.append(copy)
    return out


def transform_partitioned(
    storage: Storage,
    dataset_uri: str,
    steps: Sequence[Any],
    *,
    project: str,
    name: str,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    seed: int = DEFAULT_SAMPLE_SEED,
    metadata: dict[str, Any] | None = None,
) -> PartitionedTransform:
    """Fit on a seeded sample of a partitioned dataset, then split it partition by partition."""
    import pyarrow as pa

    from mlwp.data.transform import _step_dict

    specs = [_step_dict(step) for step in steps]
    reader = PartitionedReader(storage, dataset_uri)
    total = sum(p.rows for p in reader.partitions)
    sample = seeded_sample(reader, sample_rows, seed)
    try:
        fitted = run_transform(sample, specs)
    except TransformError as exc:
        raise TransformError(f"fitting on a sample of {len(sample)} rows: {exc.message}") from exc
    fit_sample = {"rows": len(sample), "seed": seed, "of_rows": total, "method": "bernoulli"}
    del sample
    key = uuid.uuid4().hex[:16]
    staged: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    rows_out = 0
    for index, partition in enumerate(reader.partitions):
        frame = pa.Table.from_batches(list(reader.batches(partition))).to_pandas()
        try:
            result = run_transform(frame, _with_split_seed(specs, index))
        except TransformError as exc:
            where = partition.path or dataset_uri
            raise TransformError(f"partition {where}: {exc.message}", code=exc.code) from exc
        for split, rows in result.splits.items():
            if rows.empty:
                continue
            table = pa.Table.from_pandas(rows, preserve_index=False)
            staged[split].append(
                stage_part(
                    storage,
                    table.schema,
                    table.to_batches(),
                    project=project,
                    name=f"{name}-{split}",
                    key=key,
                    index=index,
                )
            )
            rows_out += len(rows)
    splits = {}
    for split, parts in staged.items():
        if not parts:
            continue
        splits[split] = commit_staged(
            storage,
            parts,
            project=project,
            name=f"{name}-{split}",
            source=dataset_uri,
            metadata={**(metadata or {}), "split": split, "fit_sample": fit_sample},
        )
    return PartitionedTransform(
        splits=splits,
        preprocessing=fitted.preprocessing,
        rows_in=total,
        rows_filtered=total - rows_out,
        fit_sample=fit_sample,
    )
