"""Inference speed on SST-2 dev with the fine-tuned all-MiniLM-L6-v2, side by side in one process, then the HTTP
server under load from a client process.

    .venv/bin/python bench/inference.py [RUN] > bench/results/inference.json

RUN defaults to bench/results/bench-sst2-full (written by bench/sst2_full.py). Reported per system: predictions/s
on all 872 dev sentences (batched), p50/p95 for one sentence at a time, dev accuracy. Systems: transformers
`pipeline("text-classification")` at batch 1 and batch_size=32; Slingshot's Predictor on PyTorch fp32 and bf16,
ONNX fp32 and ONNX int8 (exported here when missing). Then `slingshot serve` in a subprocess, driven by an asyncio
client (httpx) at concurrency 1, 8 and 32: requests/s, p50/p95/p99 latency, errors, and batching. Cost per 1,000
predictions at 0.09 USD/hour (compare's default hardware price). Progress to stderr, JSON to stdout.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, emit, log, machine_info

PRICE_PER_HOUR_USD = 0.09
SINGLE_TEXTS = 200


def percentiles(values: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}


def measure(name: str, predict_many, predict_one, texts: list[str], gold: list[str]) -> dict:
    predict_many(texts[:64])  # warm-up: kernels, caches
    start = time.perf_counter()
    labels = predict_many(texts)
    batched_s = time.perf_counter() - start
    order = random.Random(0).sample(range(len(texts)), SINGLE_TEXTS)
    latencies = []
    for index in order:
        single = time.perf_counter()
        predict_one(texts[index])
        latencies.append(time.perf_counter() - single)
    rate = len(texts) / batched_s
    result = {"system": name, "predictions_per_s": round(rate, 1), **percentiles(latencies),
              "accuracy": round(float(np.mean([a == b for a, b in zip(labels, gold)])), 4),
              "cost_per_1k_usd": round(1000 / rate * PRICE_PER_HOUR_USD / 3600, 8)}
    log(result)
    return result


async def drive_server(url: str, texts: list[str], concurrency: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue = list(range(requests))

    async with httpx.AsyncClient(timeout=60) as client:
        async def worker():
            nonlocal errors
            while queue:
                index = queue.pop()
                start = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/predict", json={"text": texts[index % len(texts)]})
                    if response.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        batching = (await client.get(f"{url}/v1/model")).json()["batching"]
    return {"concurrency": concurrency, "requests": requests, "requests_per_s": round(requests / elapsed, 1),
            **percentiles(latencies), "errors": errors, "server_batching": batching}


def main() -> None:
    import torch
    from transformers import pipeline

    from slingshot.evaluate import load_run
    from slingshot.onnx_export import export_onnx
    from slingshot.predictor import Predictor, onnx_path

    run = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "bench" / "results" / "bench-sst2-full")
    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    loaded = load_run(str(run), threads=threads)
    from slingshot.data import load_data

    dev = load_data(loaded.recipe, strict=False, splits=("train", "eval")).splits["eval"]
    texts = list(dev["text"])
    gold = [loaded.label_names[i] for i in dev["label"]]
    for int8 in (False, True):
        if not onnx_path(run, int8).exists():
            log(f"exporting ONNX (int8={int8})")
            export_onnx(str(run), int8=int8)

    results = []
    classifier = pipeline("text-classification", model=str(run / "model"), device="cpu")
    results.append(measure("transformers pipeline, batch 1", lambda batch: [r["label"] for r in classifier(batch)],
                           lambda text: classifier(text), texts, gold))
    results.append(measure("transformers pipeline, batch_size=32",
                           lambda batch: [r["label"] for r in classifier(batch, batch_size=32)],
                           lambda text: classifier(text), texts, gold))
    for name, options in [("slingshot torch fp32", {}), ("slingshot torch bf16", {"precision": "bf16"}),
                          ("slingshot onnx fp32", {"backend": "onnx"}),
                          ("slingshot onnx int8", {"backend": "onnx", "int8": True})]:
        predictor = Predictor(loaded, threads=threads, **options)
        results.append(measure(name, predictor.labels, lambda text, p=predictor: p.labels([text]), texts, gold))
    pipeline_batched = results[1]["predictions_per_s"]
    best = max(results[2:], key=lambda r: r["predictions_per_s"])

    port = 8765
    server = subprocess.Popen([sys.executable, "-m", "slingshot", "serve", str(run), "--port", str(port),
                               "--threads", str(threads)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.5)
        load = []
        for concurrency in (1, 8, 32):
            load.append(asyncio.run(drive_server(url, texts, concurrency, 400)))
            log(load[-1])
    finally:
        server.terminate()
        server.wait(30)

    emit({"benchmark": "inference", "run": str(run), "threads": threads, "machine": machine_info(threads),
          "load_average": os.getloadavg(), "systems": results,
          "best_batched_vs_pipeline_batched": round(best["predictions_per_s"] / pipeline_batched, 2),
          "server": load,
          "server_throughput_32_vs_1": round(load[2]["requests_per_s"] / load[0]["requests_per_s"], 2)})


if __name__ == "__main__":
    main()
