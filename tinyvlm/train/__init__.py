"""Training: one loop (loop.py) that every stage (stages.py) runs: AdamW, warmup + cosine,
clipping, accumulation, validation, bf16 autocast, atomic checkpoints and exact resume; optionally
encoder pretraining first (MAE, SigLIP: pretrain.py; the data's concepts: concepts.py) before the
whole model learns to write. run.py holds a run together; config.py checks what it is asked to do."""
from .config import TrainConfig, bf16_supported, precision
from .loop import LOSS_PNG, METRICS, OPTIMIZER, STATE, Stage, Stream, load_optimizer, lr_at, run_stage, save_optimizer
from .run import Trainer, train, training_texts
from .stages import CONCEPT_STAGE, CONCEPT_WEIGHTS, MAE_STAGE, SIGLIP_STAGE, ConceptStage, MAEStage, SigLIPStage, VLMStage

__all__ = ["TrainConfig", "train", "Trainer", "Stage", "ConceptStage", "MAEStage", "SigLIPStage", "VLMStage", "Stream", "training_texts",
           "run_stage", "lr_at", "save_optimizer", "load_optimizer", "bf16_supported", "precision",
           "STATE", "OPTIMIZER", "METRICS", "LOSS_PNG", "CONCEPT_STAGE", "CONCEPT_WEIGHTS", "MAE_STAGE", "SIGLIP_STAGE"]
