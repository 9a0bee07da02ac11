"""EssayScorer: a backbone, a pooling and a head, saved and loaded without any training code.

Weights are always created and trained in fp32 (mixed precision is autocast in the engine, never
fp16 weights: that is the "Attempting to unscale FP16 gradients" failure). `load(dtype=torch.float16)`
is for inference only. Full fine-tuning saves `model.safetensors` (every weight); LoRA saves the peft
adapter (`adapter/`) plus pooling and head (`head.safetensors`) and reloads the base backbone from
`scorer.json`'s `backbone`, which must then be available at inference. Head weights are loaded
strictly, so a silently re-initialised head (the classic peft pitfall) is an error instead.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from common.models.heads import build_head
from common.models.pooling import build_pooling

CONFIG_FILE = "scorer.json"
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "head.safetensors"
ADAPTER_DIR = "adapter"


@dataclass
class ScorerConfig:
    backbone: str
    head: str = "regression"
    pooling: str = "mean"
    regression_loss: str = "mse"
    dropout: float = 0.1
    n_dropout_samples: int = 1
    reinit_layers: int = 0
    freeze_embeddings: bool = False
    gradient_checkpointing: bool = False
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["query_proj", "key_proj", "value_proj"])
    vocab_size: int | None = None


def _find_layers(model: nn.Module) -> list[nn.Module]:
    for module in model.modules():
        for attr in ("layer", "layers"):
            layers = getattr(module, attr, None)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0 and module is not model.get_input_embeddings():
                return list(layers)
    raise ValueError(f"cannot find the encoder layers of {type(model).__name__}")


class EssayScorer(nn.Module):
    def __init__(self, config: ScorerConfig, backbone: PreTrainedModel | None = None, pretrained: bool = True):
        super().__init__()
        self.config = config
        if backbone is None:
            if pretrained:
                backbone = AutoModel.from_pretrained(config.backbone, dtype=torch.float32)
            else:
                backbone = AutoModel.from_config(AutoConfig.from_pretrained(config.backbone))
        backbone = backbone.float()
        if config.vocab_size and config.vocab_size != backbone.get_input_embeddings().num_embeddings:
            backbone.resize_token_embeddings(config.vocab_size)
        hidden = backbone.config.hidden_size
        layers = _find_layers(backbone)
        if config.reinit_layers:
            for layer in layers[-config.reinit_layers :]:
                layer.apply(backbone._init_weights)
        if config.freeze_embeddings:
            for p in backbone.get_input_embeddings().parameters():
                p.requires_grad = False
        if config.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            backbone = get_peft_model(backbone, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                           lora_dropout=config.lora_dropout,
                                                           target_modules=config.lora_target_modules))
        self.backbone = backbone
        self.pooling = build_pooling(config.pooling, hidden, len(layers))
        self.head = build_head(config.head, self.pooling.out_dim, config.dropout, config.n_dropout_samples,
                               config.regression_loss)

    def encoder_layers(self) -> list[nn.Module]:
        return _find_layers(self.backbone)

    def embeddings_module(self) -> nn.Module:
        base = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return getattr(base, "embeddings", base.get_input_embeddings())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        pooled = self.pooling(out.hidden_states, attention_mask)
        return self.head(pooled.to(self.head.fc.weight.dtype))

    @torch.no_grad()
    def predict(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self(input_ids, attention_mask).float()
        return self.head.predict(logits), self.head.probs(logits)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        if self.config.lora_r > 0:
            self.backbone.save_pretrained(directory / ADAPTER_DIR)
            state = {f"pooling.{k}": v for k, v in self.pooling.state_dict().items()}
            state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
            save_file({k: v.detach().float().contiguous().clone() for k, v in state.items()}, directory / HEAD_FILE)
        else:
            state = {k: v.detach().float().contiguous().clone() for k, v in self.state_dict().items()}
            save_file(state, directory / WEIGHTS_FILE)

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> EssayScorer:
        directory = Path(directory)
        config = ScorerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        if config.lora_r > 0:
            from peft import PeftModel

            base = cls(ScorerConfig(**{**asdict(config), "lora_r": 0}))
            model = cls.__new__(cls)
            nn.Module.__init__(model)
            model.config = config
            model.backbone = PeftModel.from_pretrained(base.backbone, directory / ADAPTER_DIR)
            model.pooling, model.head = base.pooling, base.head
            state = load_file(directory / HEAD_FILE)
            model.pooling.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("pooling.")}, strict=True)
            model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
        else:
            model = cls(ScorerConfig(**{**asdict(config), "reinit_layers": 0, "gradient_checkpointing": False}),
                        pretrained=False)
            model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
        return model.to(device=device, dtype=dtype).eval()
