"""AWS Lambda entry point: the same FastAPI app behind API Gateway / a function URL (Mangum).

The lifespan runs on a cold start (models load then); set ``MLWP_SERVING_POLL_INTERVAL_SECONDS``
to 0 on Lambda, where background tasks do not run between invocations, and redeploy or call
``POST /admin/reload`` to pick up new versions.
"""

from __future__ import annotations

from mangum import Mangum

from serving.main import create_app

handler = Mangum(create_app(), lifespan="auto")
