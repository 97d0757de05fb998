"""adaptive_lm: language models that spend compute and bits only where they are needed.

Core API:
    from adaptive_lm import ModelConfig, TransformerLM, from_pretrained, save_pretrained
    model, tok = from_pretrained("builtin:shakespeare-char")
"""
from .checkpoint import from_pretrained, save_pretrained
from .model import KVCache, ModelConfig, TransformerLM

__version__ = "0.1.0"
THREADS_ENV = "ADAPTIVE_LM_THREADS"   # torch CPU threads for every command (the CLI's --threads sets it too)
__all__ = ["ModelConfig", "TransformerLM", "KVCache", "from_pretrained", "save_pretrained", "__version__"]
