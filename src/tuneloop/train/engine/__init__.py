"""tuneloop's own SFT step: packed bins, document-masked attention, the LM head on answer tokens only.

`loss` (answer-only chunked cross-entropy), `batches` (bins → flat rows and answer positions), `runtime`
(threads, precision, attention, compilation), `trainer` (the loop: optimizer, schedule, eval, checkpoints).
TRL's SFTTrainer stays the reference (`train.engine: trl`) and the engine of multi-process runs.
"""

from tuneloop.train.engine.runtime import Runtime, prepare_runtime
from tuneloop.train.engine.trainer import EngineState, SFTEngine

__all__ = ["EngineState", "Runtime", "SFTEngine", "prepare_runtime"]
