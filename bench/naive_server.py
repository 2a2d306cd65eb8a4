"""The baseline for bench/serve_load.py: transformers.pipeline inside FastAPI, one forward pass per request.

This is how a classifier is usually put behind an API: a sync endpoint (FastAPI runs it on its thread pool)
calls the pipeline on the request's texts. No queue, no batching across requests.

    python bench/naive_server.py MODEL_DIR --port 8001
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class Body(BaseModel):
    texts: list[str]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    pipe = pipeline("text-classification", model=args.model_dir, top_k=None, device="cpu")
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(body: Body) -> dict:
        return {"results": pipe(body.texts, truncation=True)}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
