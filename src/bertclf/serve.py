"""Stage 9 — serve: an HTTP API whose requests are micro-batched onto one model worker.

Each request is tokenised on arrival and queued. One batching task takes queued requests together, up to a
padded-token budget or a short wait, and runs them as one call on a single worker thread that owns the model;
the event loop never runs inference, so it keeps accepting and answering while a batch computes, and the
next batch forms meanwhile. The queue is bounded: when full, requests get 503 with Retry-After instead of
piling up. On SIGTERM uvicorn stops accepting, the requests in flight are finished, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .batching import Encoded
from .errors import BertclfError

ROUTES = ("/v1/classify", "/v1/model", "/healthz", "/readyz", "/metrics")
INLINE_ENCODE_CHARS = 4096
DEFAULT_LANES = 2  # requests up to this many characters are tokenised on the event loop (~0.1 ms)


@dataclass
class Limits:
    """What one request may ask for, and how much work may wait."""

    max_texts: int = 256
    max_chars: int = 20_000
    max_body_bytes: int = 1 << 20
    max_queue_texts: int = 4096
    max_batch_tokens: int = 4096
    max_wait_ms: float = 0.0  # 0: a free lane takes whatever is queued at once (waiting idled lanes: slower here)


class ClassifyRequest(BaseModel):
    """The body of POST /v1/classify."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="non-empty texts, at most the server's --max-texts")
    top_k: int | None = Field(default=None, ge=1, description="also list the k most probable classes per text")

    @field_validator("texts")
    @classmethod
    def usable(cls, texts: list[str]) -> list[str]:
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"texts[{i}] is empty")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"texts[{i}] is not valid Unicode (lone surrogate)") from None
        return texts


class Scored(BaseModel):
    label: str | None = Field(None, description="single-label tasks: the most probable class")
    score: float | None = Field(None, description="single-label tasks: its probability")
    labels: list[str] | None = Field(None, description="multi-label tasks: every class over its tuned threshold")
    probabilities: dict[str, float]
    top_k: list[dict] | None = None


class ClassifyResponse(BaseModel):
    backend: str
    results: list[Scored]


class QueueFull(Exception):
    """More texts are waiting than ``Limits.max_queue_texts`` allows."""


@dataclass
class _Pending:
    encoded: Encoded
    future: asyncio.Future
    longest: int = field(init=False)

    def __post_init__(self) -> None:
        self.longest = max(self.encoded.lengths)


class MicroBatcher:
    """Queues encoded requests and runs them together on the model's worker threads ("lanes").

    A batch is cut when the next request would push its padded size (longest text × texts) over
    ``max_batch_tokens``, or when ``max_wait_ms`` has passed since the batch's first request was taken.
    While batches run, new requests queue up, so under load batches grow by themselves. With two lanes a
    batch forms and starts while the other computes; each lane gets half the cores, which on 2 cores
    scored random SST-2 batches faster than one lane with both (no cross-thread sync inside each call).
    """

    def __init__(self, forward: Callable[[Encoded], np.ndarray], limits: Limits, observe: Callable[[int, int, float], None],
                 lanes: int = 1):
        self.forward, self.limits, self.observe = forward, limits, observe
        self.queue: collections.deque[_Pending] = collections.deque()
        self.queued_texts = 0
        self.arrived = asyncio.Event()
        self.lanes = asyncio.Semaphore(lanes)
        self.worker = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="bertclf-model")
        self.running: set[asyncio.Task] = set()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, encoded: Encoded) -> np.ndarray:
        """Logits for ``encoded``, in order, once its batch has run."""
        rows = len(encoded.input_ids)
        if self.queued_texts + rows > self.limits.max_queue_texts:
            raise QueueFull
        pending = _Pending(encoded, asyncio.get_running_loop().create_future())
        self.queue.append(pending)
        self.queued_texts += rows
        self.arrived.set()
        return await pending.future

    async def stop(self) -> None:
        """Finish what is queued and running, then stop the batching task and the worker threads."""
        while self.queue or self.running:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.worker.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.lanes.acquire()
            batch = await self._next_batch(loop)
            task = loop.create_task(self._execute(loop, batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        ids = [row for pending in batch for row in pending.encoded.input_ids]
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(self.worker, self.forward, Encoded(ids, 0))
        except Exception as err:  # noqa: BLE001 — handed to every waiting request, which answers 500
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        finally:
            self.lanes.release()
        self.observe(len(ids), max(p.longest for p in batch) * len(ids), time.perf_counter() - started)
        start = 0
        for pending in batch:
            stop = start + len(pending.encoded.input_ids)
            if not pending.future.done():  # a client that went away leaves a cancelled future
                pending.future.set_result(logits[start:stop])
            start = stop

    async def _next_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        while not self.queue:
            self.arrived.clear()
            await self.arrived.wait()
        batch = [self._take()]
        deadline = loop.time() + self.limits.max_wait_ms / 1000
        while True:
            while self.queue and self._fits(batch, self.queue[0]):
                batch.append(self._take())
            if self.queue or loop.time() >= deadline:  # the next one does not fit, or time is up
                return batch
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                return batch

    def _take(self) -> _Pending:
        pending = self.queue.popleft()
        self.queued_texts -= len(pending.encoded.input_ids)
        return pending

    def _fits(self, batch: list[_Pending], candidate: _Pending) -> bool:
        rows = sum(len(p.encoded.input_ids) for p in batch) + len(candidate.encoded.input_ids)
        longest = max(candidate.longest, *(p.longest for p in batch))
        return longest * rows <= self.limits.max_batch_tokens


class _Metrics:
    """Prometheus series of one app (its own registry, so two apps in one process do not collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bertclf_requests", "HTTP requests answered", ["path", "code"], registry=self.registry)
        self.latency = Histogram("bertclf_request_seconds", "Time from request to response", ["path"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.texts = Counter("bertclf_texts", "Texts classified", registry=self.registry)
        self.batch_texts = Histogram("bertclf_batch_texts", "Texts per model call", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_tokens = Histogram("bertclf_batch_padded_tokens", "Padded tokens per model call", registry=self.registry,
                                      buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 65536))
        self.batch_seconds = Histogram("bertclf_batch_seconds", "Model time per call", registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.queue = Gauge("bertclf_queue_texts", "Texts waiting for the model", registry=self.registry)

    def observe_batch(self, texts: int, padded_tokens: int, seconds: float) -> None:
        self.texts.inc(texts)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(padded_tokens)
        self.batch_seconds.observe(seconds)


class _Edge:
    """ASGI middleware: counts and times every request; a declared body over the limit gets a JSON 413 at once.

    (FastAPI's ``max_body_size`` enforces the limit while reading, chunked bodies included, but answers a
    declared Content-Length in plain text.)
    """

    def __init__(self, app, metrics: _Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def tracked_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                message = f"request body over {self.max_body_bytes} bytes; send fewer or shorter texts"
                await JSONResponse({"error": message}, status_code=413)(scope, receive, tracked_send)
            else:
                await self.app(scope, receive, tracked_send)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def create_app(model_dir: str, backend: str = "auto", threads: int | None = None, limits: Limits | None = None,
               api_key: str | None = None, lanes: int = DEFAULT_LANES):
    """The FastAPI app. The model loads and warms up in the background: /healthz answers at once, /readyz once ready.

    ``threads`` (default: all cores) are shared by ``lanes`` model worker threads.
    """
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    import torch

    from . import backends
    from .artifact import read_record
    from .estimator import TextClassifier
    from .predict import decide, probabilities

    limits = limits or Limits()
    record = read_record(model_dir)  # a wrong directory fails before the port is bound
    metrics = _Metrics()
    state: dict = {"ready": False, "error": None}

    def load() -> None:
        try:
            per_lane = max(1, (threads or torch.get_num_threads()) // lanes)
            chosen = backends.choose(record, backend, onnx_first=True)
            clf = TextClassifier.load(model_dir, backend=chosen, threads=per_lane)
            clf.verbose = False
            state["clf"] = clf
        except Exception as err:  # noqa: BLE001 — shown by /readyz and every classify call
            state["error"] = f"{type(err).__name__}: {err}"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def load_then_batch() -> None:
            await asyncio.to_thread(load)
            if "clf" in state:
                batcher = MicroBatcher(state["clf"]._forward, limits, metrics.observe_batch, lanes)
                batcher.start()
                # Every lane meets a spread of shapes before the first user does: first calls of a thread and
                # shape pay for buffers and kernel selection (a ~0.4 s stall under load otherwise).
                for rows, words in ((1, 4), (4, 16), (16, 8), (32, 32), (8, 64)):
                    warm = state["clf"]._encode(["warm up " * words] * rows)
                    await asyncio.gather(*(batcher.submit(warm) for _ in range(lanes * 2)))
                # The libraries leave ~10^6 long-lived objects; a full collection walking them stalled every
                # request ~0.3 s. Frozen, the collector skips them.
                gc.freeze()
                state["batcher"], state["ready"] = batcher, True

        loader = asyncio.create_task(load_then_batch())
        yield
        await asyncio.gather(loader, return_exceptions=True)
        if "batcher" in state:
            await state["batcher"].stop()

    app = FastAPI(title="bertclf", version=record.get("versions", {}).get("bertclf", ""), lifespan=lifespan,
                  max_body_size=limits.max_body_bytes,
                  description=f"Text classification with {os.path.basename(os.path.abspath(model_dir))} "
                              f"({record['task']}, {len(record['classes'])} classes).")
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong bearer token; send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(StarletteHTTPException)  # also 404/405 from routing, not only our own raises
    async def http_error(request: Request, err: StarletteHTTPException):
        detail = err.detail
        if err.status_code == 413 and detail == "Content Too Large":  # FastAPI's own body-size check
            detail = f"request body over {limits.max_body_bytes} bytes; send fewer or shorter texts"
        return JSONResponse({"error": detail}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        return JSONResponse({"error": _validation_message(err.errors())}, status_code=422)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              dependencies=[Depends(authorised)])
    async def classify(request: ClassifyRequest) -> Response:
        """Labels and class probabilities for each text, in order; requests are batched with others."""
        if len(request.texts) > limits.max_texts:
            raise HTTPException(413, f"{len(request.texts)} texts in one request; send at most {limits.max_texts}")
        long = next((i for i, t in enumerate(request.texts) if len(t) > limits.max_chars), None)
        if long is not None:
            raise HTTPException(413, f"texts[{long}] has {len(request.texts[long])} characters; the limit is {limits.max_chars}")
        clf = _ready_or_503(state)
        if sum(len(t) for t in request.texts) <= INLINE_ENCODE_CHARS:
            encoded = clf._encode(request.texts)
        else:
            encoded = await asyncio.to_thread(clf._encode, request.texts)
        try:
            logits = encoded.pool(await state["batcher"].submit(encoded))  # a text split into windows: their mean
        except QueueFull:
            raise HTTPException(503, "server busy: the queue is full; retry shortly", headers={"Retry-After": "1"}) from None
        finally:
            metrics.queue.set(state["batcher"].queued_texts)
        multilabel = clf.task_ == "multilabel"
        probs = probabilities(logits, multilabel)
        decided = decide(logits, multilabel, clf.thresholds_)
        classes = clf.classes_
        results = []
        for row, p in enumerate(probs):
            item: dict = {"probabilities": {name: float(v) for name, v in zip(classes, p)}}
            if multilabel:
                item["labels"] = [classes[j] for j in np.flatnonzero(decided[row])]
            else:
                item["label"], item["score"] = classes[int(decided[row])], float(p[decided[row]])
            if request.top_k:
                order = np.argsort(-p, kind="stable")[: request.top_k]
                item["top_k"] = [{"label": classes[j], "score": float(p[j])} for j in order]
            results.append(item)
        # Built by hand: validating our own output through response_model costs more than the HTTP handling.
        return Response(json.dumps({"backend": clf.backend_, "results": results}), media_type="application/json")

    @app.get("/v1/model", dependencies=[Depends(authorised)])
    async def model_info() -> dict:
        """Labels, task, base model, training metrics and the backend in use."""
        clf = state.get("clf")
        return {
            "model_dir": os.path.abspath(model_dir), "task": record["task"], "labels": record["classes"],
            "thresholds": record["thresholds"], "base_model": record["base_model"], "metrics": record["metrics"],
            "max_length": record["training"].get("max_length") or record["params"]["max_length"], "backend": clf.backend_ if clf else None,
            "ready": state["ready"], "limits": limits.__dict__,
        }

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process answers (the model may still be loading)."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        """The model is loaded and warmed up; 503 until then (or with the load error)."""
        if state["ready"]:
            return {"status": "ready", "backend": state["clf"].backend_}
        status = "failed" if state["error"] else "loading"
        return JSONResponse({"status": status, "error": state["error"]}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Requests, texts, batch sizes, queue depth and latency histograms in Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if "batcher" in state:
            metrics.queue.set(state["batcher"].queued_texts)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return _Edge(app, metrics, limits.max_body_bytes)


def _validation_message(errors: list[dict]) -> str:
    """One line from pydantic's error list: where, what, and for a wrong body the shape to send."""
    problems = []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"][1:])
        if e["type"] == "json_invalid":
            problems.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')} at character {where})")
        elif not where:
            problems.append('send a JSON object like {"texts": ["..."]} with Content-Type: application/json')
        else:
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)[:1000]


def _ready_or_503(state: dict):
    from fastapi import HTTPException

    if not state["ready"]:
        why = f"the model failed to load: {state['error']}" if state["error"] else "the model is still loading; retry shortly"
        raise HTTPException(503, why, headers={"Retry-After": "1"})
    return state["clf"]


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto", threads: int | None = None,
          limits: Limits | None = None, api_key_env: str | None = None, log_level: str = "info",
          lanes: int = DEFAULT_LANES) -> None:
    """Run the API until SIGTERM or Ctrl-C; both drain the requests in flight and return normally (exit 0)."""
    import uvicorn

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise BertclfError(f"--api-key-env {api_key_env}: that environment variable is unset or empty; export it first")
    app = create_app(model_dir, backend, threads, limits, api_key, lanes)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60)
    server = uvicorn.Server(config)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it stopped on after shutting down; a no-op handler makes that a clean exit 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    server.run()
