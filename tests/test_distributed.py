"""Training in several processes (torchrun, gloo on the CPU): the same model as one process at the
same global batch, one checkpoint, a lost process ends the others with one clear line, and an
interrupted run resumes to the uninterrupted run's losses."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_shapes_dataset
from tinyvlm.errors import TinyVLMError
from tinyvlm.train import Stream, TrainConfig, train
from tinyvlm.train.distributed import Dist, backend_for
from tinyvlm.data.dataset import open_records

# nano, fp32, no dropout: the runs differ only in how the global batch of 16 is split
TRAIN = ["--preset", "nano", "--steps", "30", "--lr", "3e-3", "--warmup", "5", "--vocab-size", "300", "--eval-every", "10",
         "--save-every", "10", "--log-every", "1", "--dropout", "0", "--dtype", "fp32", "--quiet"]
# 5e-7 is the largest gap measured between 2 processes x 8 and 1 process x 16 over 30 steps (the
# order of float32 sums in the gradient average); 1e-4 allows 200 times that and is still well
# under the 0.03-0.5 the loss moves per step, so a wrong shard, a missing gradient average or a
# rank-0-only loss would fail it
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def torchrun(*args, timeout=120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(free_port()),
           "-m", "tinyvlm", "train", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A 2-process run of 30 steps, batch 8 per process, on 48 pictures."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_shapes_dataset(root / "shapes", n=48)
    done = torchrun("--data", str(data), "--out", str(root / "run2"), "--batch-size", "8", *TRAIN)
    assert done.returncode == 0, done.stderr[-2000:]
    return data, root / "run2", done


def test_two_processes_train_as_one_process_at_the_same_global_batch(two, tmp_path):
    data, run2, done = two
    assert done.stdout.count("model saved to") == 1 and "2 processes" in done.stderr  # rank 0 speaks, once
    assert sorted(p.name for p in run2.iterdir()) == ["checkpoint", "loss.png", "metrics.jsonl"]  # one checkpoint
    state = json.loads((run2 / "checkpoint" / "state.json").read_text())
    assert state["step"] == 30 and state["world_size"] == 2
    rows = [json.loads(l) for l in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))  # one row a step, not one per process

    train(TrainConfig(data=str(data), out=str(tmp_path / "run1"), preset="nano", steps=30, batch_size=16, lr=3e-3,
                      warmup=5, vocab_size=300, eval_every=10, save_every=10, log_every=1, dropout=0.0, dtype="fp32",
                      progress=False))
    one, two_ = losses(tmp_path / "run1"), losses(run2)
    assert one.keys() == two_.keys()
    assert max(abs(one[s] - two_[s]) for s in one) < TOLERANCE, (one, two_)
    assert one[30] < one[1] - 2  # and it learned: a curve that stayed flat would match trivially


def test_each_process_reads_its_own_share_and_all_stand_at_the_same_place(shapes):
    cfg = TrainConfig(data=str(shapes), out="unused", steps=1, batch_size=3)
    source = open_records(shapes)
    whole = Stream(source, cfg)
    parts = [Stream(source, cfg, rank=r, world=2) for r in (0, 1)]
    it_whole, its = iter(whole), [iter(p) for p in parts]
    for _ in range(10):  # 10 rounds (more than an epoch of 24): rank r takes the r-th 3 of every 6
        six = [next(it_whole)[0].text for _ in range(6)]
        mine = [[next(it)[0].text for _ in range(3)] for it in its]
        assert mine[0] + mine[1] == six
        assert (parts[0].epoch, parts[0].pos) == (parts[1].epoch, parts[1].pos) == (whole.epoch, whole.pos)


def test_a_killed_process_ends_the_other_with_one_line_and_the_run_resumes_to_the_same_losses(two, tmp_path):
    """The 2-process run again, its two processes started as torchrun starts them; rank 1 is
    killed soon after the step-5 checkpoint. Rank 0 must stop with one line naming what happened
    (no traceback), long before --dist-timeout (300 s). Resumed by 2 processes, the run then logs
    the uninterrupted run's losses; 1 process is refused (it would change the global batch)."""
    data, run2, _ = two
    out, port = tmp_path / "run", free_port()
    args = ["--data", str(data), "--out", str(out), "--batch-size", "8", *TRAIN, "--save-every", "5"]
    procs = [subprocess.Popen([sys.executable, "-m", "tinyvlm", "train", *args],
                              env={**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                                   "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").is_file() or max(losses(out), default=0) < 6:  # past the step-5 checkpoint
            assert time.monotonic() < deadline and procs[0].poll() is None
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        _, err = procs[0].communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    lines = [l for l in err.splitlines() if l.strip()]
    assert procs[0].returncode == 2, err
    assert lines[-1].startswith("tinyvlm: error: training process 0 of 2 lost another process") and "by peer" in lines[-1], err
    assert "Traceback" not in err and took < 20, (err, took)
    stopped_at = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    assert 5 <= stopped_at < 30  # it was stopped mid-run

    cfg = TrainConfig(data=str(data), out=str(out), preset="nano", steps=30, batch_size=8, lr=3e-3, warmup=5,
                      vocab_size=300, eval_every=10, save_every=5, log_every=1, dropout=0.0, dtype="fp32", progress=False)
    with pytest.raises(TinyVLMError, match="different number of processes: the run was trained by 2, now 1"):
        train(cfg, resume=True)

    done = torchrun(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    straight, resumed = losses(run2), losses(out)
    assert resumed.keys() == straight.keys()
    assert max(abs(straight[s] - resumed[s]) for s in straight) < TOLERANCE, (straight, resumed)


def test_a_bad_launch_is_one_clear_line(tmp_path, shapes, monkeypatch):
    """What torchrun would have set, set wrong by hand: each a TinyVLMError, before any data is read."""
    cfg = dict(data=str(shapes), out=str(tmp_path / "run"), preset="nano", steps=2, vocab_size=300, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(TinyVLMError, match="MASTER_ADDR .*not set: start the processes with torchrun"):
        train(TrainConfig(**cfg))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(TinyVLMError, match="RANK 2 and WORLD_SIZE 2 do not fit"):
        train(TrainConfig(**cfg))
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(TinyVLMError, match="RANK must be a whole number"):
        train(TrainConfig(**cfg))
    for bad in (0, -1, float("nan")):
        with pytest.raises(TinyVLMError, match="dist_timeout must be a number > 0"):
            TrainConfig(**cfg, dist_timeout=bad)
    assert not (tmp_path / "run").exists()


def test_the_backend_follows_the_device():
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"
    alone = Dist()  # no torchrun: every collective is the identity, and the model is not wrapped
    model = torch.nn.Linear(2, 2)
    assert alone.wrap(model) is model and alone.sum_floats([1.5, 2.0]) == [1.5, 2.0]
    assert alone.broadcast_object({"a": 1}) == {"a": 1} and alone.broadcast_float(0.5) == 0.5 and alone.is_main
