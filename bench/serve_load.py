"""Serving under load: `bertclf serve` against a naive pipeline-in-FastAPI server and offline batch scoring.

1. offline: the same backend scoring the same texts in one predict_proba call (fresh child process, best of 3).
2. bertclf: `python -m bertclf serve MODEL --backend B` as a subprocess on loopback, driven by a bounded aiohttp
   client at each concurrency (1, 8, 32, 64) with 1-text and 16-text requests, for --seconds each after a
   short warm-up; texts/s, p50/p95/p99 latency, errors (any non-200 or connection failure).
3. naive: bench/naive_server.py (transformers.pipeline in a sync FastAPI endpoint) under the same load.
4. bad requests: 1,000 malformed, oversized and unauthenticated requests interleaved with valid load at
   concurrency 32; each must get its expected 4xx, none a 5xx, and every valid request a 200.
5. SIGTERM under load: the server must answer what it accepted, then exit 0.

Texts: SST-2 test sentences. Everything runs on this machine (client and server share its cores).

    python bench/serve_load.py --model runs/sst2-minilm
Writes docs/benchmarks/serving.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from common import DATASETS, REPO, run_child, write_results

KEY = "bench-secret-key"
CONCURRENCY = (1, 8, 32, 64)
PER_REQUEST = (1, 16)


def offline_child(model_dir: str, backend: str) -> None:
    """Child mode: offline texts/s of the backend on the benchmark texts."""
    from bertclf import TextClassifier, backends
    from bertclf.artifact import read_record

    # The backend the server picks for this --backend (auto prefers ONNX there).
    clf = TextClassifier.load(model_dir, backend=backends.choose(read_record(model_dir), backend, onnx_first=True))
    clf.verbose = False
    texts = bench_texts()
    clf.predict_proba(texts[:64])
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        clf.predict_proba(texts)
        best = max(best, len(texts) / (time.perf_counter() - start))
    print(json.dumps({"texts_per_s": best, "backend": clf.backend_}))


def bench_texts() -> list[str]:
    return pd.read_csv(DATASETS / "sst2_sentences" / "test.csv", dtype=str, keep_default_na=False)["text"].tolist()


def start(command: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_KEY": KEY}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import urllib.request

    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready in 120 s")


def bad_requests(max_texts: int, max_chars: int, max_body: int) -> list[tuple[str, bytes, dict, int]]:
    """(kind, body, headers, expected status) for each kind of bad request the server must refuse cleanly."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    js = lambda obj: json.dumps(obj).encode()  # noqa: E731
    return [
        ("invalid_json", b'{"texts": [', auth, 422),
        ("missing_texts", js({"text": "hello"}), auth, 422),
        ("texts_not_list", js({"texts": "hello"}), auth, 422),
        ("text_not_string", js({"texts": [3]}), auth, 422),
        ("empty_text", js({"texts": [""]}), auth, 422),
        ("bad_top_k", js({"texts": ["hi"], "top_k": 0}), auth, 422),
        ("lone_surrogate", b'{"texts": ["\\ud800"]}', auth, 422),
        ("form_body", b"texts=hello", {**auth, "Content-Type": "application/x-www-form-urlencoded"}, 422),
        ("too_many_texts", js({"texts": ["hi"] * (max_texts + 1)}), auth, 413),
        ("text_too_long", js({"texts": ["a" * (max_chars + 1)]}), auth, 413),
        ("body_too_large", js({"texts": ["word " * 1000] * (max_body // 5000 + 1)}), auth, 413),
        ("no_token", js({"texts": ["hi"]}), {"Content-Type": "application/json"}, 401),
        ("wrong_token", js({"texts": ["hi"]}), {**auth, "Authorization": "Bearer nope"}, 401),
    ]


async def drive(url: str, texts: list[str], concurrency: int, per_request: int, seconds: float, warmup: float = 1.0,
                bad: list | None = None, on_started=None) -> dict:
    """Closed-loop load: ``concurrency`` clients, each sending its next request when the last one is answered.

    With ``bad``, each client also sends one of those after each valid request, until all are sent.
    """
    import aiohttp

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    stats = {"texts": 0, "errors": 0, "statuses": {}, "bad": {"sent": 0, "answered_4xx": 0, "answered_5xx": 0,
                                                              "unexpected": {}, "failed": 0}}
    counter = iter(range(10**9))
    bad_queue = list(bad or [])
    loop = asyncio.get_running_loop()
    begin = loop.time()
    measure_from, end = begin + warmup, begin + warmup + seconds

    async def one_bad(session) -> None:
        kind, body, bad_headers, expected = bad_queue.pop()
        stats["bad"]["sent"] += 1
        try:
            async with session.post(url, data=body, headers=bad_headers) as reply:
                await reply.read()
                code = reply.status
        except aiohttp.ClientError:
            stats["bad"]["failed"] += 1
            return
        tally = "answered_4xx" if 400 <= code < 500 else "answered_5xx" if code >= 500 else "answered_other"
        stats["bad"][tally] = stats["bad"].get(tally, 0) + 1
        if code != expected:
            stats["bad"]["unexpected"][f"{kind}:{code}"] = stats["bad"]["unexpected"].get(f"{kind}:{code}", 0) + 1

    async def client(session) -> None:
        while loop.time() < end or bad_queue:
            i = next(counter)
            batch = [texts[(i * per_request + j) % len(texts)] for j in range(per_request)]
            sent = loop.time()
            try:
                async with session.post(url, data=json.dumps({"texts": batch}), headers=headers) as reply:
                    await reply.read()
                    code = reply.status
            except aiohttp.ClientError:
                code = "connection"
            done = loop.time()
            if code == "connection" and on_started:  # the server is going away (SIGTERM test): stop this client
                stats["statuses"]["connection"] = stats["statuses"].get("connection", 0) + 1
                return
            stats["statuses"][str(code)] = stats["statuses"].get(str(code), 0) + 1
            if measure_from <= done <= end:  # completed inside the window, whenever it was sent
                if code == 200:
                    latencies.append(done - sent)
                    stats["texts"] += per_request
                else:
                    stats["errors"] += 1
            if bad_queue:
                await one_bad(session)

    import resource

    client_cpu = resource.getrusage(resource.RUSAGE_SELF)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        if on_started:
            await on_started()
        if bad:
            await asyncio.gather(*tasks)
        else:  # requests still unanswered when the window closes are abandoned, not waited for
            _, late = await asyncio.wait(tasks, timeout=max(end - loop.time(), 0) + 1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
    used = resource.getrusage(resource.RUSAGE_SELF)
    client_seconds = used.ru_utime + used.ru_stime - client_cpu.ru_utime - client_cpu.ru_stime
    ms = np.asarray(latencies) * 1000
    return {
        "texts_per_s": stats["texts"] / seconds if seconds else None,
        # None (null) when no request was answered inside the window
        **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else None for q in (50, 95, 99)},
        "errors": stats["errors"], "requests": len(latencies), "statuses": stats["statuses"], "bad": stats["bad"],
        "client_cores": client_seconds / max(loop.time() - begin, 1e-9),  # CPU the load generator itself used
    }


def sigterm_under_load(command: list[str], port: int, texts: list[str]) -> dict:
    """Load at concurrency 32, SIGTERM after 2 s: every answered request must be a 200 and the exit code 0."""
    proc = start(command, port)

    async def run() -> dict:
        async def later() -> None:
            await asyncio.sleep(2.0)
            proc.send_signal(signal.SIGTERM)

        return await drive(f"http://127.0.0.1:{port}/v1/classify", texts, 32, 1, seconds=6.0, warmup=0.0,
                           on_started=later)

    result = asyncio.run(run())
    code = proc.wait(timeout=120)
    statuses = result["statuses"]
    return {"exit_code": code, "answered_200": statuses.get("200", 0),
            "answered_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
            "refused_after_sigterm": statuses.get("connection", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "runs" / "sst2-minilm"))
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per load run")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--child-offline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_offline:
        return offline_child(args.model, args.backend)

    texts = bench_texts()
    offline = run_child(__file__, ["--child-offline", "--model", args.model, "--backend", args.backend])
    print(f"offline {offline['backend']}: {offline['texts_per_s']:.1f} texts/s", flush=True)
    url = f"http://127.0.0.1:{args.port}/v1/classify"
    ours = [sys.executable, "-m", "bertclf", "serve", args.model, "--port", str(args.port), "--backend", args.backend,
            "--log-level", "error", "--api-key-env", "BENCH_KEY"]
    naive = [sys.executable, str(REPO / "bench" / "naive_server.py"), args.model, "--port", str(args.port)]

    runs = []
    for name, command in (("bertclf", ours), ("naive", naive)):
        proc = start(command, args.port)
        try:
            for per_request in PER_REQUEST:
                for concurrency in CONCURRENCY:
                    row = asyncio.run(drive(url, texts, concurrency, per_request, args.seconds))
                    runs.append({"server": name, "concurrency": concurrency, "texts_per_request": per_request,
                                 **{k: row[k] for k in ("texts_per_s", "p50_ms", "p95_ms", "p99_ms", "errors", "requests", "client_cores")}})
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)

    limits = {"max_texts": 256, "max_chars": 20_000, "max_body": 1 << 20}  # the serve defaults
    proc = start(ours, args.port)
    try:
        kinds = bad_requests(limits["max_texts"], limits["max_chars"], limits["max_body"])
        mixed = [kinds[i % len(kinds)] for i in range(1000)]
        row = asyncio.run(drive(url, texts, 32, 1, seconds=0.0, warmup=0.0, bad=mixed))
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    bad = row["bad"]
    bad_summary = {"sent": bad["sent"], "answered_4xx": bad.get("answered_4xx", 0), "answered_5xx": bad.get("answered_5xx", 0),
                   "wrong_status": bad["unexpected"], "connection_failures": bad["failed"],
                   "valid_requests_alongside": sum(row["statuses"].values()),
                   "valid_requests_not_200": sum(v for k, v in row["statuses"].items() if k != "200")}
    print(json.dumps(bad_summary), flush=True)
    sigterm = sigterm_under_load(ours, args.port, texts)
    print(json.dumps(sigterm), flush=True)

    def pick(server: str, concurrency: int, per_request: int) -> dict:
        return next(r for r in runs if (r["server"], r["concurrency"], r["texts_per_request"]) == (server, concurrency, per_request))

    naive32 = pick("naive", 32, 1)["texts_per_s"]
    ours32 = pick("bertclf", 32, 1)
    payload = {
        "offline_texts_per_s": offline["texts_per_s"], "backend": offline["backend"], "naive_texts_per_s": naive32,
        "runs": runs, "bad_requests": bad_summary, "sigterm_under_load": sigterm,
        "targets": {"c32_share_of_offline": ours32["texts_per_s"] / offline["texts_per_s"],
                    "c32_vs_naive": ours32["texts_per_s"] / naive32, "c32_errors": ours32["errors"]},
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores; client and server on the same machine (loopback)",
    }
    write_results("serving", payload, markdown(payload))


def markdown(p: dict) -> str:
    t = p["targets"]
    lines = [
        "# Serving under load",
        "",
        f"`{p['command']}` — {p['machine']}. Model: the SST-2 MiniLM-L6 artifact; texts: SST-2 test sentences; "
        f"backend `{p['backend']}` (what the server's `--backend auto` chose). Offline batch throughput of that backend on the same "
        f"texts: **{p['offline_texts_per_s']:.1f} texts/s**.",
        "",
        f"- Concurrency 32, 1 text per request: **{t['c32_share_of_offline']:.0%} of offline** (target ≥ 70%), "
        f"**{t['c32_vs_naive']:.1f}× the naive server** (target ≥ 4×), {t['c32_errors']} errors.",
        f"- Bad requests: {p['bad_requests']['sent']} sent amid valid load, {p['bad_requests']['answered_4xx']} answered 4xx, "
        f"{p['bad_requests']['answered_5xx']} answered 5xx, wrong status: {p['bad_requests']['wrong_status'] or 'none'}; "
        f"valid requests alongside: {p['bad_requests']['valid_requests_alongside']}, not 200: {p['bad_requests']['valid_requests_not_200']}.",
        f"- SIGTERM under load (concurrency 32): exit code {p['sigterm_under_load']['exit_code']}, "
        f"{p['sigterm_under_load']['answered_200']} requests answered 200, {p['sigterm_under_load']['answered_5xx']} 5xx, "
        f"{p['sigterm_under_load']['refused_after_sigterm']} refused at the socket after the signal.",
        "",
        "| server | concurrency | texts/request | texts/s | p50 ms | p95 ms | p99 ms | errors | client CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in p["runs"]:
        ms = " | ".join("—" if r[k] is None else f"{r[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
        lines.append(f"| {r['server']} | {r['concurrency']} | {r['texts_per_request']} | {r['texts_per_s']:.1f} | "
                     f"{ms} | {r['errors']} | {r['client_cores']:.2f} |")
    lines += ["", "naive = `bench/naive_server.py`: `transformers.pipeline` (torch fp32) in a sync FastAPI endpoint, "
              "one forward pass per request, no batching across requests. texts/s counts requests answered inside "
              "the measured window; 0.0 and — mean none was (each took longer than the window).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
