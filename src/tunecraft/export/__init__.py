"""Export a run directory as standard artifacts: PEFT adapter, merged HF model, GGUF, or a GGUF
LoRA adapter for llama.cpp.

Every export verifies itself (rendering, end-of-turn token, logits) before it is moved into place.
"""

from tunecraft.export.export import ExportError, ExportResult, export_run, verify_export
from tunecraft.export.verify import TOLERANCES, ExportVerificationError

__all__ = ["TOLERANCES", "ExportError", "ExportResult", "ExportVerificationError", "export_run", "verify_export"]
