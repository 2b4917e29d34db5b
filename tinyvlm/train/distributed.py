"""Many training processes, on PyTorch's own engine: `torchrun --nproc_per_node N -m tinyvlm train ...`.

torchrun starts N copies of the same command and tells each who it is (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). This module reads that, joins the process group (gloo on
CPUs, NCCL on CUDA GPUs), and gives the one training loop the few collective steps it needs: wrap
the model in DistributedDataParallel (Li et al., "PyTorch Distributed", VLDB 2020, arXiv
2006.15704), agree on a float or an object, and turn a lost peer into one clear error.

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op, so a single process runs the same
code as before.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as td

from ..errors import TinyVLMError

DEFAULT_TIMEOUT = 300.0  # seconds a collective waits for the slowest process before giving up


def backend_for(device: torch.device) -> str:
    """gloo on CPUs (what nanoVLM lacks: it runs NCCL only), NCCL between CUDA GPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise TinyVLMError(f"environment variable {name} must be a whole number (torchrun sets it); got {raw!r}") from None


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun)."""
    return _env_int("RANK", 0)


@dataclass
class Dist:
    """Who this process is among the training processes, and the collectives the loop uses."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, plots and messages."""
        return self.rank == 0

    # --- the model -----------------------------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module in DistributedDataParallel (its gradients averaged over the processes in
        backward, its parameters broadcast from rank 0 now), or the module itself alone."""
        if not self.enabled:
            return module
        if not any(p.requires_grad for p in module.parameters()):
            return module
        from torch.nn.parallel import DistributedDataParallel
        ids = [module_device(module).index] if module_device(module).type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    # --- agreeing ------------------------------------------------------------------------------
    def sum_floats(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (float64, so counts stay exact)."""
        if not self.enabled or not values:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        td.all_reduce(t)
        return t.tolist()

    def any_true(self, flag: bool) -> bool:
        """True on every process if it is true on any (e.g. a stop request)."""
        return self.sum_floats([float(flag)])[0] > 0 if self.enabled else flag

    def broadcast_float(self, value: float) -> float:
        """Rank 0's value on every process (e.g. its clock, so a minutes budget ends on the same
        step everywhere and no process waits for a step the others never take)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        td.broadcast(t, src=0)
        return t.item()

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's object (built there once: a tokenizer's JSON, the concept vocabulary) on every
        process. Pickled by torch between these processes only; never from a file."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def barrier(self):
        if self.enabled:
            td.barrier(device_ids=[self.local_rank]) if self._comm_device().type == "cuda" else td.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")

    # --- a lost peer ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def peers_guard(self) -> Iterator[None]:
        """A collective that fails because another process died, or did not answer within the
        timeout, becomes one clear TinyVLMError instead of a traceback from the backend."""
        try:
            yield
        except RuntimeError as e:
            if not self.enabled or not _is_peer_failure(e):
                raise
            raise TinyVLMError(f"training process {self.rank} of {self.world} lost another process (it stopped, or "
                               f"did not answer within --dist-timeout): {_first_sentence(e)}") from None


def _first_sentence(e: BaseException) -> str:
    """The backend's message without its source location: "Connection closed by peer [127.0.0.1]:4242"."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().split("\n")[0]) or e.__class__.__name__
    return text.split(". ")[0][:200]


def _is_peer_failure(e: BaseException) -> bool:
    if isinstance(e, getattr(td, "DistError", ())):
        return True
    text = str(e).lower()
    return any(k in text for k in ("gloo", "nccl", "c10d", "connection closed", "connection reset", "timed out",
                                   "broken pipe", "peer"))


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def this_device(device: torch.device, dist: Dist) -> torch.device:
    """Each process on a node takes its own GPU (LOCAL_RANK); CPU processes share the CPU."""
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT) -> Iterator[Dist]:
    """Join the training processes torchrun started (reading its environment), yield who this
    process is, and leave the group at the end. A lone process yields Dist() and joins nothing; a
    group that is already up (the caller started it) is used and left up."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = env_rank(), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise TinyVLMError(f"RANK {rank} and WORLD_SIZE {world} do not fit together (0 <= RANK < WORLD_SIZE)")
    if world == 1:
        yield Dist()
        return
    if td.is_initialized():
        dist = Dist(td.get_rank(), td.get_world_size(), local)
        with dist.peers_guard():
            yield dist
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise TinyVLMError(f"WORLD_SIZE is {world} but {' and '.join(missing)} is not set: start the processes "
                           "with torchrun (docs/training.md#many-processes)")
    if device.type == "cuda":
        torch.cuda.set_device(local)
    backend = backend_for(device)
    try:
        td.init_process_group(backend, rank=rank, world_size=world,
                              timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise TinyVLMError(f"training process {rank} of {world} could not join the others ({backend}, "
                           f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {_first_sentence(e)}") from None
    dist = Dist(rank, world, local)
    try:
        with dist.peers_guard():
            yield dist
    finally:
        with contextlib.suppress(Exception):
            td.destroy_process_group()
