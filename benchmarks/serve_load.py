"""Load on `tinyvlm serve`, over loopback only: C concurrent clients send N chat completions in all
(each a picture and a text: by default a plain 64x64 colour and a question; greedy, at most T new
tokens), to a server with dynamic batching and to the same server one at a time (--max-batch 1).
Both servers start first; then each is loaded in turn, --rounds times (N / rounds requests each
time), so that on a shared machine both meet the same passing load from other jobs. The clients are
threads, each with one kept-alive connection of the standard library's http.client (--client
httpx: httpx's async client, which costs the cores the server shares a few times more CPU a
request). Prints, for each server: 5xx answers, dropped requests (no answer: a connection error or
the client's timeout), other non-200 answers, p50/p99 latency, requests/s, the server's CPU time per
answered request (all its threads: load on the machine moves it less than it moves requests/s) and
the load generator's, and the server's resident memory at the start and end of the run (and its
peak, sampled every 0.2 s).

    .venv/bin/python benchmarks/serve_load.py                      # a random nano model
    .venv/bin/python benchmarks/serve_load.py --model runs/demo/run  # a trained one

Bounded in count (--requests) and in time (--seconds a run, spread over its rounds: no request
starts after it).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


def cpu_s(pid: int) -> float:
    """CPU seconds a process has spent, user and system, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def picture(i: int, folder: Path | None = None) -> str:
    """The i-th picture: a plain 64x64 colour, or the i-th PNG of `folder`."""
    if folder is not None:
        data = sorted(folder.glob("*.png"))[i].read_bytes()
    else:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


class Server:
    """`tinyvlm serve` in its own process on a free loopback port, and what its load runs measured."""

    def __init__(self, model: Path, max_batch: int, a):
        self.max_batch, self.url = max_batch, f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinyvlm", "serve", "--model", str(model), "--port", self.url.rsplit(":", 1)[1],
             "--max-batch", str(max_batch), "--max-queue", str(a.clients * 2), "--timeout", str(a.timeout)]
            + (["--threads", str(a.threads)] if a.threads else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.latencies, self.codes, self.dropped, self.wall, self.cpu, self.client_cpu = [], [], 0, 0.0, 0.0, 0.0
        self.rss0 = self.peak = float("nan")

    def ready(self, body: dict) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(self.url + "/health").raise_for_status()
                break
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        httpx.post(self.url + "/v1/chat/completions", json=body, timeout=60)  # warm up
        self.rss0 = self.peak = rss_mib(self.proc.pid)

    def load(self, bodies: list[dict], requests: range, a) -> None:
        """Send `requests` (indices into `bodies`) from a.clients concurrent clients; add up the results."""
        stop_at = time.monotonic() + a.seconds / a.rounds
        sent = iter(requests)

        async def client(http: httpx.AsyncClient):
            # one event loop drives every client, so the load generator itself costs little CPU
            for i in sent:
                if time.monotonic() >= stop_at:
                    return
                t = time.monotonic()
                try:
                    r = await http.post("/v1/chat/completions", json=bodies[i % len(bodies)])
                except httpx.HTTPError:
                    self.dropped += 1
                    continue
                self.latencies.append(time.monotonic() - t)
                self.codes.append(r.status_code)

        async def watch(done: asyncio.Event):
            while not done.is_set():
                self.watch_rss()
                await asyncio.sleep(0.2)

        async def run():
            done = asyncio.Event()
            limits = httpx.Limits(max_connections=a.clients)
            async with httpx.AsyncClient(base_url=self.url, timeout=a.timeout + 10, limits=limits) as http:
                watcher = asyncio.create_task(watch(done))
                await asyncio.gather(*(client(http) for _ in range(a.clients)))
                done.set()
                await watcher

        def plain_client():
            # the standard library's HTTP/1.1 on one kept-alive connection per client thread: a few
            # times less CPU a request than httpx's async client, on the cores the server shares
            host, port = self.url.rsplit("/", 1)[1].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=a.timeout + 10)
            for i in sent:
                if time.monotonic() >= stop_at:
                    break
                t = time.monotonic()
                try:
                    conn.request("POST", "/v1/chat/completions", encoded[i % len(encoded)],
                                  {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    self.dropped += 1
                    conn.close()  # the next request opens a new connection
                    continue
                self.latencies.append(time.monotonic() - t)
                self.codes.append(r.status)
            conn.close()

        t0, cpu0, mine0 = time.monotonic(), cpu_s(self.proc.pid), time.process_time()
        if a.client == "httpx":
            asyncio.run(run())
        else:
            encoded = [json.dumps(b).encode() for b in bodies]
            sent = iter(requests)  # the threads share it: next() on a range iterator is atomic under the GIL
            done = threading.Event()

            def watch_thread():
                while not done.wait(0.2):
                    self.watch_rss()
            watcher = threading.Thread(target=watch_thread)
            watcher.start()
            with ThreadPoolExecutor(a.clients) as pool:
                for f in [pool.submit(plain_client) for _ in range(a.clients)]:
                    f.result()
            done.set()
            watcher.join()
        self.wall += time.monotonic() - t0
        self.cpu += cpu_s(self.proc.pid) - cpu0
        self.client_cpu += time.process_time() - mine0

    def watch_rss(self) -> None:
        self.peak = max(self.peak, rss_mib(self.proc.pid))

    def result(self) -> dict:
        end_rss = rss_mib(self.proc.pid)
        health = httpx.get(self.url + "/health").json()
        lat, codes = sorted(self.latencies), self.codes
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
        ok = codes.count(200)
        return {"batch": self.max_batch, "sent": len(codes) + self.dropped, "ok": ok,
                "5xx": sum(c >= 500 for c in codes), "other": sum(c != 200 and c < 500 for c in codes),
                "dropped": self.dropped, "p50": q(0.5), "p99": q(0.99), "rps": ok / self.wall,
                "cpu_ms": 1000 * self.cpu / max(1, ok), "client_ms": 1000 * self.client_cpu / max(1, ok),
                "rss0": self.rss0,
                "rss1": end_rss, "peak": self.peak, "batches": health["batches"], "rows": health["rows"]}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def compare(model: Path, a) -> list[dict]:
    """The batched server and the one-at-a-time one (--max-batch 1), both started first, then loaded
    in turn, a.rounds times each: on a shared machine both meet the same passing load. Only the
    server being loaded works; the other waits idle."""
    folder = Path(a.pictures) if a.pictures else None
    bodies = [{"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": picture(i, folder)}},
        {"type": "text", "text": a.text}]}], "max_tokens": a.max_tokens} for i in range(64)]
    servers = [Server(model, a.max_batch, a), Server(model, 1, a)]
    try:
        for s in servers:
            s.ready(bodies[0])
        cuts = [a.requests * k // a.rounds for k in range(a.rounds + 1)]
        for k in range(a.rounds):
            for s in servers:
                s.load(bodies, range(cuts[k], cuts[k + 1]), a)
        return [s.result() for s in servers]
    finally:
        for s in servers:
            s.close()


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
    p.add_argument("--pictures", help="a folder of PNGs to send, its first 64 (default: 64 plain colours)")
    p.add_argument("--text", default="What is in the picture?", help="the user's text beside the picture")
    p.add_argument("--client", choices=("stdlib", "httpx"), default="stdlib",
                   help="the load generator: http.client on 16 threads, or httpx's async client (more CPU a request)")
    p.add_argument("--rounds", type=int, default=5,
                   help="load the two servers in turn this many times, requests/rounds each time (1: one run each)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(a.model) if a.model else random_model(Path(tmp) / "nano")
        rows = compare(model, a)
    print(f"{a.clients} clients, {a.requests} requests a run in {a.rounds} round(s), max_tokens {a.max_tokens}, "
          f"client {a.client}, text {a.text!r}, pictures {a.pictures or 'plain colours'}, model {a.model or 'random nano'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| max batch | sent | 200 | 5xx | other 4xx | dropped | p50 ms | p99 ms | requests/s | server CPU ms/request "
          "| client CPU ms/request | rows/batch | RSS start MiB | RSS end MiB | RSS peak MiB |")
    print("|" + "---|" * 15)
    for r in rows:
        print(f"| {r['batch']} | {r['sent']} | {r['ok']} | {r['5xx']} | {r['other']} | {r['dropped']} | {r['p50']:.0f} "
              f"| {r['p99']:.0f} | {r['rps']:.1f} | {r['cpu_ms']:.1f} | {r['client_ms']:.1f} | {r['rows'] / max(1, r['batches']):.2f} "
              f"| {r['rss0']:.0f} | {r['rss1']:.0f} | {r['peak']:.0f} |")
    print(f"\nbatched throughput: {rows[0]['rps'] / rows[1]['rps']:.2f}x one at a time")


if __name__ == "__main__":
    main()
