"""The floor: a bare FastAPI app scoring with the same mlwp model (records -> numpy ->
``inplace_predict``), with no auth, routing, metrics or logging. ``MLWP_BENCH_MODEL_DIR``
names the model directory."""

from __future__ import annotations

import os

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from mlwp import model as mlwp_model

model = mlwp_model.load(os.environ["MLWP_BENCH_MODEL_DIR"])
model.booster.set_param({"nthread": 1})
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    records = orjson.loads(await request.body())["data"]
    result = model.predict(records)
    return Response(
        orjson.dumps({"predictions": result.predictions, "probabilities": result.probabilities}),
        media_type="application/json",
    )
