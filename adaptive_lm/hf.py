"""Our checkpoints through Hugging Face `transformers` (optional dependency: `pip install adaptive_lm[hf]`).

    import adaptive_lm.hf                          # registers the classes
    from transformers import AutoConfig, AutoModel
    model = AutoModel.from_pretrained("runs/mdlm-arith/checkpoint")   # or adaptive_lm.hf.builtin_path(NAME)
    logits = model(input_ids, attention_mask=mask).logits

A checkpoint folder of ours is already laid out the Hugging Face way (config.json with
``model_type: adaptive_lm``, model.safetensors); registering ``AdaptiveLMConfig`` and
``AdaptiveLMModel`` with the Auto classes makes ``AutoModel.from_pretrained`` build the same
TransformerLM and load the same weights. The wrapper returns an object with ``.logits`` (and
``.hidden_states``), so the diffusion samplers, DAEDAL included, accept it unchanged — the same
path a user's LLaDA-style Hugging Face checkpoint goes through.
"""
from __future__ import annotations

from dataclasses import fields

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .checkpoint import resolve
from .model import ModelConfig, TransformerLM

MODEL_TYPE = "adaptive_lm"


class AdaptiveLMConfig(PretrainedConfig):
    """Hugging Face config holding our ModelConfig (the ``model`` section of config.json)."""
    model_type = MODEL_TYPE

    def __init__(self, model: dict | None = None, architecture: str = "TransformerLM", meta: dict | None = None, **kwargs):
        self.model = dict(model or {})
        self.architecture = architecture
        self.meta = dict(meta or {})
        kwargs.setdefault("tie_word_embeddings", self.model.get("tie_embeddings", True))
        super().__init__(**kwargs)

    def backbone_config(self) -> ModelConfig:
        known = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in self.model.items() if k in known})


class AdaptiveLMModel(PreTrainedModel):
    """TransformerLM behind the PreTrainedModel interface; weights live in ``self.net``."""
    config_class = AdaptiveLMConfig
    base_model_prefix = "net"
    _tied_weights_keys = {"net.head.weight": "net.tok_emb.weight"}

    def __init__(self, config: AdaptiveLMConfig):
        super().__init__(config)
        self.net = TransformerLM(config.backbone_config())
        self.post_init()

    def _init_weights(self, module):   # weights come from the checkpoint; keep TransformerLM's own init
        pass

    def get_input_embeddings(self):
        return self.net.tok_emb

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False, **kwargs):
        out = self.net(input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        hidden = tuple(out.hidden_states) if out.hidden_states is not None else None
        return MaskedLMOutput(logits=out.logits, hidden_states=hidden)


AutoConfig.register(MODEL_TYPE, AdaptiveLMConfig, exist_ok=True)
AutoModel.register(AdaptiveLMConfig, AdaptiveLMModel, exist_ok=True)
AutoModelForCausalLM.register(AdaptiveLMConfig, AdaptiveLMModel, exist_ok=True)


def builtin_path(name: str) -> str:
    """The folder of a shipped checkpoint, for AutoModel.from_pretrained."""
    return str(resolve(f"builtin:{name}"))
