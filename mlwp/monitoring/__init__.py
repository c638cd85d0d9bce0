"""The monitoring loop after deploy: captured predictions, labels, statistics, drift.

``capture`` (prediction capture and labels: schemas, storage layout, reading and joining) is
what serving writes and the monitor task reads; the rest (statistics, drift, the monitor's
report) builds on it. Nothing here imports Airflow; heavy libraries (pyarrow, pandas) are
imported inside the functions that need them.
"""
