"""The mlwp serving service: a FastAPI application exposing ``app``."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI(title="mlwp serving")


@app.get("/health/live")
def live() -> dict[str, str]:
    """Report that the process is up."""
    return {"status": "ok"}


@app.get("/health/ready")
def ready() -> dict[str, str]:
    """Report that the service is ready to answer predictions."""
    return {"status": "ok"}
