"""Running the platform's processes: configuration, first-run setup and supervision."""
