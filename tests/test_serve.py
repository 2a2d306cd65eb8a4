"""`bertclf serve`: answers, limits, errors, micro-batching, queue bound, metrics and SIGTERM draining."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bertclf.batching import Encoded
from bertclf.serve import Limits, MicroBatcher, QueueFull, create_app

from .conftest import child_env, free_port

KEY = "test-key-123"


def ready(client: TestClient) -> None:
    for _ in range(300):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"never ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(sst_binary):
    _, path, _ = sst_binary
    app = create_app(path, backend="torch", limits=Limits(max_texts=8, max_chars=200, max_body_bytes=4000), api_key=KEY)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        ready(c)
        yield c


def test_classify_matches_the_python_api_in_order(client, sst_binary):
    clf, _, dev = sst_binary
    texts = dev.text.tolist()[:6]
    reply = client.post("/v1/classify", json={"texts": texts, "top_k": 2})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    expected = clf.predict_proba(texts)
    for row, item in zip(expected, results):
        probs = [item["probabilities"][c] for c in clf.classes_]
        assert np.allclose(probs, row, atol=1e-5)
        assert item["label"] == clf.classes_[int(np.argmax(row))]
        assert [t["label"] for t in item["top_k"]] == [clf.classes_[i] for i in np.argsort(-row)]


def test_model_health_ready_and_metrics(client, sst_binary):
    clf, _, _ = sst_binary
    info = client.get("/v1/model").json()
    assert info["labels"] == clf.classes_ and info["task"] == "binary" and info["backend"] == "torch"
    assert "dev" in info["metrics"] and info["max_length"] == clf.max_length_ == clf.training_["max_length"]
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/classify", json={"texts": ["fine"]})
    text = client.get("/metrics").text
    for series in ("bertclf_requests_total", "bertclf_texts_total", "bertclf_batch_texts_bucket",
                   "bertclf_queue_texts", "bertclf_request_seconds_bucket"):
        assert series in text
    assert 'bertclf_requests_total{code="200",path="/v1/classify"}' in text
    assert client.get("/openapi.json").json()["paths"]["/v1/classify"]


@pytest.mark.parametrize("body, headers, status, message", [
    ({"texts": []}, {}, 422, "texts: List should have at least 1 item"),
    ({"texts": [""]}, {}, 422, "texts: texts[0] is empty"),
    ({"texts": "one"}, {}, 422, "texts: Input should be a valid list"),
    ({"texts": ["a"], "top_k": 0}, {}, 422, "top_k: Input should be greater than or equal to 1"),
    ({"texts": ["a"], "extra": 1}, {}, 422, "extra: Extra inputs are not permitted"),
    (b'{"texts": [', {"Content-Type": "application/json"}, 422, "the body is not valid JSON"),
    (b'{"texts": ["\\ud800"]}', {"Content-Type": "application/json"}, 422, "texts[0] is not valid Unicode"),
    ({"texts": ["a"] * 9}, {}, 413, "9 texts in one request; send at most 8"),
    ({"texts": ["a" * 201]}, {}, 413, "texts[0] has 201 characters; the limit is 200"),
    ({"texts": ["word " * 30] * 8 * 4}, {}, 413, "request body over 4000 bytes"),
    ({"texts": ["a"]}, {"Authorization": "Bearer wrong"}, 401, "missing or wrong bearer token"),
])
def test_bad_requests_get_a_clear_4xx(client, body, headers, status, message):
    send = {"content": body} if isinstance(body, bytes) else {"json": body}
    reply = client.post("/v1/classify", headers=headers, **send)
    assert reply.status_code == status
    assert message in reply.json()["error"]


def test_missing_token_is_401_and_health_needs_none(sst_binary):
    app = create_app(sst_binary[1], backend="torch", api_key=KEY)
    with TestClient(app) as c:
        ready(c)
        assert c.post("/v1/classify", json={"texts": ["a"]}).status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_multilabel_answers_use_the_artifact_thresholds(tmp_path, tiny_model_dir):
    from bertclf import TextClassifier

    from .conftest import FAST, subset

    train = subset("goemotions", "train", 200, label_column="labels")
    clf = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1})
    clf.fit(train.text.tolist(), train["labels"].str.split("|").tolist())
    path = str(tmp_path / "ge")
    clf.save(path)
    record = json.load(open(os.path.join(path, "bertclf.json")))
    record["thresholds"] = [0.0] + [1.01] * (len(clf.classes_) - 1)  # the first label always, the others never
    with open(os.path.join(path, "bertclf.json"), "w") as fh:
        json.dump(record, fh)
    with TestClient(create_app(path, backend="torch")) as c:
        ready(c)
        results = c.post("/v1/classify", json={"texts": ["so happy today", "this is awful"]}).json()["results"]
    assert [r["labels"] for r in results] == [[clf.classes_[0]], [clf.classes_[0]]]
    assert "label" not in results[0] and len(results[0]["probabilities"]) == len(clf.classes_)


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(10):
            yield b" " * 1000

    reply = client.post("/v1/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413
    assert "request body over 4000 bytes" in reply.json()["error"]


@pytest.mark.parametrize("lanes", [1, 2])
def test_concurrent_requests_share_batches_and_get_their_own_rows(lanes):
    calls: list[int] = []

    def forward(encoded: Encoded) -> np.ndarray:
        calls.append(len(encoded.input_ids))
        time.sleep(0.02)
        return np.asarray([[float(ids[0])] for ids in encoded.input_ids])

    async def scenario():
        batcher = MicroBatcher(forward, Limits(max_wait_ms=5, max_batch_tokens=10_000), lambda *a: None, lanes)
        batcher.start()
        requests = [Encoded([[i, 1, 2], [i + 1000, 1]], 0) for i in range(40)]
        outs = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return outs

    outs = asyncio.run(scenario())
    assert [o[:, 0].tolist() for o in outs] == [[i, i + 1000] for i in range(40)]
    assert sum(calls) == 80 and len(calls) < 10  # 40 requests in a handful of model calls


def test_token_budget_cuts_batches():
    calls: list[int] = []

    def forward(encoded: Encoded) -> np.ndarray:
        calls.append(len(encoded.input_ids))
        return np.zeros((len(encoded.input_ids), 1))

    async def scenario():
        batcher = MicroBatcher(forward, Limits(max_wait_ms=50, max_batch_tokens=40), lambda *a: None)
        batcher.start()
        await asyncio.gather(*(batcher.submit(Encoded([[1] * 10], 0)) for _ in range(12)))
        await batcher.stop()

    asyncio.run(scenario())
    assert sum(calls) == 12 and max(calls) == 4  # 4 rows x 10 tokens fill the 40-token budget


def test_a_full_queue_refuses_instead_of_growing():
    release = concurrent.futures.Future()

    def forward(encoded: Encoded) -> np.ndarray:
        release.result(timeout=10)
        return np.zeros((len(encoded.input_ids), 1))

    async def scenario():
        batcher = MicroBatcher(forward, Limits(max_queue_texts=3, max_wait_ms=0), lambda *a: None)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(Encoded([[1]], 0)))
        await asyncio.sleep(0.05)  # the first is now running; the next three wait
        waiting = [asyncio.ensure_future(batcher.submit(Encoded([[1]], 0))) for _ in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.submit(Encoded([[1]], 0))
        release.set_result(None)
        await asyncio.gather(first, *waiting)
        await batcher.stop()

    asyncio.run(scenario())


def test_sigterm_drains_requests_in_flight_and_exits_0(sst_binary):
    """The real CLI in a subprocess: requests in flight when SIGTERM arrives are all answered 200."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertclf", "serve", sst_binary[1], "--port", str(port), "--backend", "torch",
         "--log-level", "warning", "--max-wait-ms", "500"],
        env=child_env(), stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"{url}/readyz", timeout=1).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            raise AssertionError(proc.stderr.read())

        def classify(i: int) -> int:
            body = json.dumps({"texts": [f"text number {i}"]}).encode()
            request = urllib.request.Request(f"{url}/v1/classify", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(classify, i) for i in range(16)]
            time.sleep(0.25)  # all sent; the 500 ms batching wait keeps them in flight
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result() for f in futures]
        assert statuses == [200] * 16
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_missing_api_key_env(sst_binary, capsys, monkeypatch):
    from bertclf.cli import main

    monkeypatch.delenv("BERTCLF_TEST_UNSET_KEY", raising=False)
    assert main(["serve", sst_binary[1], "--api-key-env", "BERTCLF_TEST_UNSET_KEY"]) == 2
    assert "BERTCLF_TEST_UNSET_KEY: that environment variable is unset" in capsys.readouterr().err
