"""Datasets: storage and its content-addressed refs, extract (CSV/Parquet/SQL into datasets,
streamed into partitions when large), Great Expectations validation, the fitted transform
(whole or partition by partition), and batch scoring of partitions with a saved model.
Heavy libraries (pandas, pyarrow, great_expectations) are imported inside functions."""
