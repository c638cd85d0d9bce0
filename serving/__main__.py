"""``python -m serving``: the service under uvicorn (see :mod:`serving.server`)."""

from serving.server import main

main()
