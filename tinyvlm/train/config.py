"""TrainConfig: every choice a training run makes, checked when it is made, and the rule for
which of them may change when a run is resumed."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import get_args

import torch

from ..config import LIMITS, VLMConfig, get_preset
from ..data.batches import ICL_TASK, TASKS
from ..data.images import AUGMENTS, Fit
from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..tokenizer import SPECIALS


# The encoder pretraining stages, in the order they run (each stage's folder in the run directory),
# and the field holding each one's share of the budget.
PRETRAIN_SHARES = {"mae": "mae", "siglip": "siglip", "concepts": "concept_pretrain"}


@dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "mini"
    val_data: str | None = None     # default: DATA's val/ split, else 5% of records held out by image
    image_size: int | None = None   # preset overrides, e.g. 64 px for fast CPU runs
    patch_size: int | None = None
    stem: str | None = None         # the encoder's patch embedding: patch (preset default) or conv
    pixel_shuffle: int | None = None
    summary_tokens: int | None = None  # K learned queries summarise the patches (connector.Summariser); 0 = off
    max_len: int | None = None
    dropout: float | None = None
    vocab_size: int = 4096          # BPE target; the real size is what the training text supports
    steps: int | None = None        # budget in optimizer steps ...
    minutes: float | None = None    # ... or in wall-clock minutes (converted to steps once, then fixed)
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    tasks: tuple[str, ...] = TASKS  # for picture-book records: which texts to teach ("icl": mix in icl_data)
    icl_data: str | None = None     # in-context episodes (`tinyvlm data icl`), taught on the "icl" steps
    icl_share: float = 0.5          # with "icl" in tasks: the share of steps that train on episodes
    init: str | None = None         # start from this trained model's weights and tokenizer (fine-tuning)
    mae: float = 0.0                # share of the budget first spent on masked-image modelling (MAE)
    mask_ratio: float = 0.75        # MAE: the share of each picture's patches hidden
    siglip: float = 0.0             # share of the budget then spent on image-caption contrast (SigLIP)
    concept_pretrain: float = 0.0   # share of the budget then spent teaching the encoder concepts
    freeze_encoder: bool = False    # then keep that encoder fixed while the VLM learns to read it
    augment: bool | str = False     # False, "light" (True means it: old runs) or "colour" (data/images.augment)
    image_fit: str = "pad"
    dtype: str = "auto"             # auto | fp32 | bf16
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 200
    progress: bool = True
    dist_timeout: float = 300.0     # seconds a process waits for the others (torchrun runs) before one clear error

    # fields that may differ between a run and its resumption
    RUNTIME = ("device", "progress", "log_every", "dist_timeout")

    # the preset overrides, checked by the model config's own ranges under their names here
    OVERRIDES = {"image_size": "vit_image_size", "patch_size": "vit_patch_size", "pixel_shuffle": "mp_pixel_shuffle",
                 "summary_tokens": "mp_summary_tokens",
                 "max_len": "lm_max_len", "dropout": "dropout"}

    def __post_init__(self):
        """Every field checked before any data is read: one clear line naming the first bad one."""
        if (self.steps is None) == (self.minutes is None):
            raise TinyVLMError("give a training budget: --steps N or --minutes M (one of them)")
        if self.steps is not None:
            check_range("steps", self.steps, 1, MAX_COUNT, integer=True, note="optimizer steps")
        if self.minutes is not None:
            check_range("minutes", self.minutes, 0, 1e6, lo_open=True, note="wall-clock minutes")
        for name, theirs in self.OVERRIDES.items():
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), **LIMITS[theirs])
        check_range("vocab_size", self.vocab_size, 256 + len(SPECIALS), LIMITS["lm_vocab_size"]["hi"], integer=True,
                    note="tokens: the 256 bytes and the special tokens at least")
        for name in ("batch_size", "grad_accum", "log_every", "eval_every", "save_every", "eval_batches"):
            check_range(name, getattr(self, name), 1, MAX_COUNT, integer=True)
        check_range("lr", self.lr, 0, 1, lo_open=True)
        check_range("dist_timeout", self.dist_timeout, 0, 1e6, lo_open=True, note="seconds")
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1, note="the last learning rate, as a share of lr")
        check_range("warmup", self.warmup, 0, MAX_COUNT, integer=True, note="optimizer steps")
        check_range("weight_decay", self.weight_decay, 0, 1)
        check_range("grad_clip", self.grad_clip, 0, lo_open=True, note="the gradient's largest L2 norm")
        for name in PRETRAIN_SHARES.values():
            check_range(name, getattr(self, name), 0, 1, hi_open=True, note="a share of the budget")
        if self.pretrain_share() >= 1:
            raise TinyVLMError(f"the encoder pretraining shares add up to {self.pretrain_share():g} of the budget: "
                               "leave some for the VLM (their sum must be below 1)")
        check_range("mask_ratio", self.mask_ratio, 0, 1, lo_open=True, hi_open=True,
                    note="the share of patches MAE hides")
        check_seed("seed", self.seed)
        for name in ("freeze_encoder", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TinyVLMError(f"{name} must be true or false; got {getattr(self, name)!r}")
        self.augment = augment_mode(self.augment)
        if self.image_fit not in get_args(Fit):
            raise TinyVLMError(f"unknown image_fit '{self.image_fit}': use {' or '.join(get_args(Fit))}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise TinyVLMError(f"unknown dtype '{self.dtype}': use auto, fp32 or bf16")
        self.tasks = tuple(self.tasks)
        bad = set(self.tasks) - set(TASKS) - {ICL_TASK}
        if bad or not self.tasks:
            raise TinyVLMError(f"unknown task(s) {sorted(bad)}: choose from {', '.join(TASKS + (ICL_TASK,))}")
        check_range("icl_share", self.icl_share, 0, 1, lo_open=True, note="a share of the steps")
        if (ICL_TASK in self.tasks) != (self.icl_data is not None):
            raise TinyVLMError("the task 'icl' trains on in-context episodes: give both --tasks ...,icl and "
                               "--icl-data DIR (made by `tinyvlm data icl`)")
        if ICL_TASK in self.tasks and self.tasks == (ICL_TASK,) and self.icl_share != 1:
            self.icl_share = 1.0  # nothing else to teach
        if self.freeze_encoder and not (self.pretrain_share() or self.init):
            raise TinyVLMError("freeze_encoder keeps the encoder as its pretraining left it, so it needs "
                               "concept_pretrain, mae or siglip > 0, or --init (a from-scratch encoder would "
                               "stay random)")
        if self.init is not None and self.pretrain_share():
            raise TinyVLMError("--init starts from a trained model, whose encoder has learned already: "
                               "drop --mae, --siglip and --concept-pretrain")
        if self.steps is not None:
            for stage, (n, _) in self.stage_budgets().items():
                name = PRETRAIN_SHARES.get(stage)
                if n < 1 and (name is None or getattr(self, name)):
                    what = f"{name} {getattr(self, name)}" if name else f"the encoder pretraining shares ({self.pretrain_share():g})"
                    raise TinyVLMError(f"{what} of {self.steps} steps gives {n} to the {stage} stage: "
                                       "each stage needs at least one step")
        self.model_config()  # an unknown preset or a geometry that does not fit -> a clear error now, not after loading data

    def model_config(self, **more) -> VLMConfig:
        """The preset with this run's model overrides (and `more`, e.g. the tokenizer's vocabulary size)."""
        return get_preset(self.preset, vit_image_size=self.image_size, vit_patch_size=self.patch_size,
                          vit_stem=self.stem, mp_pixel_shuffle=self.pixel_shuffle,
                          mp_summary_tokens=self.summary_tokens, lm_max_len=self.max_len,
                          dropout=self.dropout, **more)

    def text_tasks(self) -> tuple[str, ...]:
        """The picture-book tasks the non-episode steps take in turn."""
        return tuple(t for t in self.tasks if t != ICL_TASK)

    def icl_step(self, step: int) -> bool:
        """Is this step one of the icl_share of steps that train on episodes? Spread evenly."""
        if ICL_TASK not in self.tasks:
            return False
        return math.floor((step + 1) * self.icl_share) > math.floor(step * self.icl_share)

    def pretrain_share(self) -> float:
        """The share of the budget the encoder pretraining stages spend together."""
        return sum(getattr(self, name) for name in PRETRAIN_SHARES.values())

    def stage_budgets(self) -> dict[str, tuple[int | None, float | None]]:
        """(steps, minutes) of each stage, in the order they run (PRETRAIN_SHARES, then the VLM):
        each pretraining stage its share of the budget, the VLM the rest."""
        out, used = {}, 0
        for stage, name in PRETRAIN_SHARES.items():
            share = getattr(self, name)
            steps = round(share * self.steps) if self.steps else None
            used += steps or 0
            out[stage] = (steps, share * self.minutes if self.minutes else None)
        out["vlm"] = (self.steps - used if self.steps else None,
                      (1 - self.pretrain_share()) * self.minutes if self.minutes else None)
        return out

    def comparable(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME}

    def check_resumable(self, saved: dict):
        """Refuse to resume a run saved with a different config (fields added since count as their
        default)."""
        defaults, now = {f.name: f.default for f in fields(self)}, self.comparable()
        if "augment" in saved:
            try:
                saved = {**saved, "augment": augment_mode(saved["augment"])}
            except TinyVLMError:  # a hand-edited state.json: say whose value it is
                raise TinyVLMError(f"cannot resume: the saved run's augment is {saved['augment']!r}, which this "
                                   f"tinyvlm does not know (false, true or one of {', '.join(AUGMENTS)})") from None
        diff = [k for k in sorted(now) if saved.get(k, defaults.get(k)) != now[k]
                and not (k == "tasks" and tuple(saved.get(k, ())) == now[k])]
        if diff:
            raise TinyVLMError("cannot resume with a different config: " +
                               ", ".join(f"{k} was {saved.get(k, defaults.get(k))!r}, now {now[k]!r}" for k in diff))


def augment_mode(value) -> bool | str:
    """--augment's value as a run keeps it: False (off), "light" or "colour". True, what runs
    saved before the modes existed, is "light"; anything else is one clear error."""
    if value is True:
        return "light"
    if value is False or value in AUGMENTS:
        return value
    raise TinyVLMError(f"augment must be false, true (light) or one of {', '.join(AUGMENTS)}; got {value!r}")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def precision(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """Whether to train under bf16 autocast, and one line saying what was chosen and why."""
    native = bf16_supported(device)
    where = "this CPU" if device.type == "cpu" else f"this {device.type} device"
    if cfg.dtype == "fp32":
        return False, f"precision: fp32 on {device.type} (--dtype fp32)"
    if cfg.dtype == "bf16":
        return True, f"precision: bf16 autocast on {device.type} (--dtype bf16{'' if native else f'; not native on {where}, slow'})"
    if native:
        return True, f"precision: bf16 autocast on {device.type} (native on {where})"
    return False, f"precision: fp32 on {device.type} (bf16 is not native on {where})"
