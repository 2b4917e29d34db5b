"""Load on `tinyvlm serve`, over loopback only: C concurrent clients send N chat completions in all
(each a picture and a question, greedy, at most T new tokens), first with dynamic batching and then
one at a time (--max-batch 1). Prints, for each: 5xx answers, dropped requests (no answer: a
connection error or the client's timeout), other non-200 answers, p50/p99 latency, requests/s, and
the server's resident memory at the start and end of the run (and its peak, sampled every 0.2 s).

    .venv/bin/python benchmarks/serve_load.py                      # a random nano model
    .venv/bin/python benchmarks/serve_load.py --model runs/demo/run  # a trained one

Bounded in count (--requests) and in time (--seconds a run: no request starts after it).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image


def random_model(path: Path) -> Path:
    import torch

    from tinyvlm import TinyVLM, get_preset
    from tinyvlm.model import VisionLanguageModel
    from tinyvlm.tokenizer import Tokenizer
    torch.manual_seed(0)
    tok = Tokenizer.train(["a red ball on the grass", "two blue cats sit by a tree", "the sun is yellow"] * 20, 300)
    cfg = get_preset("nano", dropout=0.0, lm_vocab_size=64 * -(-tok.vocab_size // 64))
    TinyVLM(VisionLanguageModel(cfg).eval(), tok).save_pretrained(path)
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(i: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run(model: Path, max_batch: int, a) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tinyvlm", "serve", "--model", str(model), "--port", str(port),
                               "--max-batch", str(max_batch), "--max-queue", str(a.clients * 2),
                               "--timeout", str(a.timeout)] + (["--threads", str(a.threads)] if a.threads else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health").raise_for_status()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        bodies = [{"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": picture(i)}},
            {"type": "text", "text": "What is in the picture?"}]}], "max_tokens": a.max_tokens} for i in range(64)]
        httpx.post(url + "/v1/chat/completions", json=bodies[0], timeout=60)  # warm up
        start_rss = peak = rss_mib(server.pid)
        latencies, codes, dropped = [], [], [0]
        stop_at = time.monotonic() + a.seconds
        sent = iter(range(a.requests))

        async def client(http: httpx.AsyncClient):
            # one event loop drives every client, so the load generator itself costs little CPU
            for i in sent:
                if time.monotonic() >= stop_at:
                    return
                t = time.monotonic()
                try:
                    r = await http.post("/v1/chat/completions", json=bodies[i % len(bodies)])
                except httpx.HTTPError:
                    dropped[0] += 1
                    continue
                latencies.append(time.monotonic() - t)
                codes.append(r.status_code)

        async def watch(done: asyncio.Event):
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mib(server.pid))
                await asyncio.sleep(0.2)

        async def load():
            done = asyncio.Event()
            limits = httpx.Limits(max_connections=a.clients)
            async with httpx.AsyncClient(base_url=url, timeout=a.timeout + 10, limits=limits) as http:
                watcher = asyncio.create_task(watch(done))
                await asyncio.gather(*(client(http) for _ in range(a.clients)))
                done.set()
                await watcher

        t0 = time.monotonic()
        asyncio.run(load())
        wall = time.monotonic() - t0
        end_rss = rss_mib(server.pid)
        health = httpx.get(url + "/health").json()
    finally:
        server.terminate()
        server.wait(20)
    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    ok = codes.count(200)
    return {"batch": max_batch, "sent": len(codes) + dropped[0], "ok": ok, "5xx": sum(c >= 500 for c in codes),
            "other": sum(c != 200 and c < 500 for c in codes), "dropped": dropped[0], "p50": q(0.5), "p99": q(0.99),
            "rps": ok / wall, "rss0": start_rss, "rss1": end_rss, "peak": peak, "batches": health["batches"],
            "rows": health["rows"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model or run directory (default: a random nano model)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--requests", type=int, default=1000, help="requests in all, per run")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each request")
    p.add_argument("--max-batch", type=int, default=8, help="the batched run's --max-batch")
    p.add_argument("--seconds", type=float, default=300, help="no request starts after this many seconds of a run")
    p.add_argument("--threads", type=int, default=None, help="the server's --threads (default: its own)")
    p.add_argument("--timeout", type=float, default=60, help="the server's and (plus 10 s) the client's timeout")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(a.model) if a.model else random_model(Path(tmp) / "nano")
        rows = [run(model, a.max_batch, a), run(model, 1, a)]
    print(f"{a.clients} clients, {a.requests} requests a run, max_tokens {a.max_tokens}, model "
          f"{a.model or 'random nano'}, {os.cpu_count()} CPUs\n")
    print("| max batch | sent | 200 | 5xx | other 4xx | dropped | p50 ms | p99 ms | requests/s | rows/batch "
          "| RSS start MiB | RSS end MiB | RSS peak MiB |")
    print("|" + "---|" * 13)
    for r in rows:
        print(f"| {r['batch']} | {r['sent']} | {r['ok']} | {r['5xx']} | {r['other']} | {r['dropped']} | {r['p50']:.0f} "
              f"| {r['p99']:.0f} | {r['rps']:.1f} | {r['rows'] / max(1, r['batches']):.2f} | {r['rss0']:.0f} "
              f"| {r['rss1']:.0f} | {r['peak']:.0f} |")
    print(f"\nbatched throughput: {rows[0]['rps'] / rows[1]['rps']:.2f}x one at a time")


if __name__ == "__main__":
    main()
