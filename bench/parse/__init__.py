"""Parse-time benchmark of YAML definitions (python -m bench.parse)."""
