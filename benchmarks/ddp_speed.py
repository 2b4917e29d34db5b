"""Two training processes of one thread (torchrun, gloo) against one process of two threads, on
the same data, model and global batch: samples per second, as `tinyvlm train` logs them.

    python benchmarks/ddp_speed.py --data /work/exp/world-train            # mini, 64 px, global batch 32
    python benchmarks/ddp_speed.py --data DIR --steps 100 --repeats 3 --preset nano --batch 16 --single

Each run is the real command line (`python -m tinyvlm train` or `python -m torch.distributed.run
--nproc_per_node 2 -m tinyvlm train`) with a fresh run folder; the rate is the mean of the
samples_per_s rows in its metrics.jsonl after the first (which holds warm-up). The two set-ups
take turns, so a change in the machine's load falls on both. The table is honest whichever wins:
on a small machine, 2 processes x 1 thread pay for the gradient all-reduce and for each reading
every record of a round, and 1 process x 2 threads pays for intra-op threading of small matrices.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict:
    """Train once; samples/s (the mean of the logged rates after the first) and wall time."""
    per_process = args.batch // processes
    train = ["-m", "tinyvlm", "train", "--data", args.data, "--out", str(out), "--preset", args.preset,
             "--image-size", str(args.image_size), "--patch-size", str(args.patch_size), "--steps", str(args.steps),
             "--batch-size", str(per_process), "--log-every", str(args.log_every), "--eval-every", str(10 * args.steps),
             "--save-every", str(10 * args.steps), "--tasks", args.tasks, "--dtype", args.dtype, "--quiet"]
    launcher = ([sys.executable] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master-port", str(free_port())])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t = time.perf_counter()
    done = subprocess.run(launcher + train, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"ddp_speed: the run failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]
    return {"samples_s": statistics.mean(rates), "wall_s": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training data (e.g. a picture-book world folder)")
    p.add_argument("--preset", default="mini")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=32, help="the global batch, split over the processes")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--tasks", default="short")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--single", action="store_true", help="also time 1 process x 1 thread")
    args = p.parse_args()
    # (processes, threads each); 1 x 1 shows what one core alone gives, for scale
    setups = [(1, 2), (2, 1), (1, 1)] if args.single else [(1, 2), (2, 1)]
    results: dict = {s: [] for s in setups}
    with tempfile.TemporaryDirectory(prefix="ddp_speed.") as tmp:
        for rep in range(args.repeats):
            for procs, threads in setups:
                r = one_run(procs, threads, args, Path(tmp) / f"run-{procs}x{threads}-{rep}")
                results[(procs, threads)].append(r)
                print(f"  run {rep + 1}: {procs} process(es) x {threads} thread(s): {r['samples_s']:.1f} samples/s, "
                      f"{r['wall_s']:.1f} s wall", file=sys.stderr)
    load = os.getloadavg()[0]  # other jobs on the machine skew both set-ups: say how busy it was
    base = statistics.median(r["samples_s"] for r in results[(1, 2)])
    print(f"\n{args.preset}, {args.image_size} px / {args.patch_size} px patches, {args.dtype}, global batch {args.batch}, "
          f"{args.steps} steps, {args.repeats} runs each (median); {os.cpu_count()} cores, load average {load:.1f} at the end\n")
    print("| set-up | batch per process | samples/s | vs 1 x 2 | wall s (start-up included) |")
    print("|---|---|---|---|---|")
    for procs, threads in setups:
        rate = statistics.median(r["samples_s"] for r in results[(procs, threads)])
        wall = statistics.median(r["wall_s"] for r in results[(procs, threads)])
        print(f"| {procs} process{'es' if procs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''} | "
              f"{args.batch // procs} | {rate:.1f} | {rate / base:.2f}x | {wall:.1f} |")


if __name__ == "__main__":
    main()
