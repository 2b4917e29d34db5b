"""How closely 2 training processes (torchrun, gloo) follow 1 process at the same global batch:
the largest gap between their logged losses (train and validation), step by step.

    python benchmarks/ddp_parity.py                 # nano on a small shapes set made here, 30 steps
    python benchmarks/ddp_parity.py --steps 60 --dropout 0.1 --augment

Runs, all with the same seed and a global batch of 2B:
  2 processes x batch B            (python -m torch.distributed.run --nproc_per_node 2 -m tinyvlm train)
  1 process  x batch B x grad-accum 2   (what the loop promises to equal, dropout and augmentation included)
  1 process  x batch 2B            (the same while there is no dropout and no augmentation, as the loss
                                    is a mean over examples; with them, other draws of the same distribution)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run: Path) -> dict:
    return {(r["step"], k): r[k] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            for k in ("loss", "val_loss") if k in r}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="training data (default: 48 shape pictures made in a temporary folder)")
    p.add_argument("--preset", default="nano")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8, help="B, the batch of each process")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--augment", action="store_true")
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="ddp_parity.") as tmp:
        tmp = Path(tmp)
        if args.data is None:
            from conftest import make_shapes_dataset
            args.data = str(make_shapes_dataset(tmp / "shapes", n=48))
        common = ["-m", "tinyvlm", "train", "--data", args.data, "--preset", args.preset, "--steps", str(args.steps),
                  "--lr", "3e-3", "--warmup", "5", "--vocab-size", "300", "--eval-every", "10", "--save-every",
                  str(args.steps), "--log-every", "1", "--dropout", str(args.dropout), "--dtype", "fp32", "--quiet",
                  *(["--augment"] if args.augment else [])]
        runs = {"2 processes x batch B": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port",
                                          str(free_port()), *common, "--batch-size", str(args.batch)],
                "1 process x batch B x grad-accum 2": [*common, "--batch-size", str(args.batch), "--grad-accum", "2"],
                "1 process x batch 2B": [*common, "--batch-size", str(2 * args.batch)]}
        curves = {}
        for name, cmd in runs.items():
            out = tmp / name.replace(" ", "_")
            done = subprocess.run([sys.executable, *cmd, "--out", str(out)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"ddp_parity: '{name}' failed:\n{done.stderr[-3000:]}")
            curves[name] = losses(out)
    ref = curves["2 processes x batch B"]
    print(f"\n{args.preset}, B={args.batch}, {args.steps} steps, fp32, dropout {args.dropout}"
          f"{', augment' if args.augment else ''}; loss {ref[(1, 'loss')]:.3f} -> {ref[(args.steps, 'loss')]:.3f}\n")
    print("| against 2 processes x batch B | largest loss gap | rows |")
    print("|---|---|---|")
    for name, curve in curves.items():
        if name != "2 processes x batch B":
            assert curve.keys() == ref.keys(), name
            print(f"| {name} | {max(abs(curve[k] - ref[k]) for k in ref):.2g} | {len(ref)} |")


if __name__ == "__main__":
    main()
