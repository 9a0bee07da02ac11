"""EssayScorer: a transformer backbone, a pooling and a head, saved and loaded without training code.

`EssayScorer(config)` builds a model to train: the backbone from `config.backbone` (a hub name or a
local directory, loaded in fp32), optionally with resized embeddings, re-initialised top layers, frozen
embeddings, activation checkpointing or LoRA adapters; then a pooling and a head, and the loss it trains
with (`loss(logits, target)`), each built by name from its registry (common.models).

Weights are created, trained and saved in fp32. Mixed precision belongs to autocast in the training
engine; fp16 weights under a GradScaler fail with "Attempting to unscale FP16 gradients".
`EssayScorer.load(directory, dtype=torch.float16)` is for inference only (T4/P100 have no bf16).

A saved directory holds
- `scorer.json`: the ScorerConfig;
- full fine-tuning: `model.safetensors` (every weight of the EssayScorer, fp32) and `backbone/config.json`
  (the backbone's architecture), so the directory needs nothing else to predict;
- LoRA: `adapter/` (peft `save_pretrained`) and `head.safetensors` (pooling and head weights, plus the
  rows of any tokens added by resizing the vocabulary, which are random at resize time and frozen under
  LoRA). The base backbone is NOT copied: `load` reads it again from `config.backbone` (a relative
  path resolves against the working directory), so it must be available at inference.
`load` restores every tensor strictly: a missing or unexpected key is an error, never a silently
re-initialised head (the classic way a LoRA classifier loses its head).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from common.config.model_params import ScorerParams
from common.core.io import atomic_write, staged_dir, write_json
from common.models.parts.heads import HEADS, Head
from common.models.parts.losses import Loss, loss_for
from common.models.parts.pooling import Pooling, build_pooling

log = logging.getLogger(__name__)

CONFIG_FILE = "scorer.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_CONFIG_DIR = "backbone"
ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
NEW_TOKENS_KEY = "new_token_embeddings"

# Where encoder layers live, by architecture: BERT / MiniLM / RoBERTa / DeBERTa-v2,v3 / ELECTRA use
# `encoder.layer`; the others are DistilBERT and models with a flat `layers` list.
_LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer")


@dataclass(kw_only=True)
class ScorerConfig(ScorerParams):
    """Everything needed to rebuild an EssayScorer, saved as `scorer.json` beside its weights: the
    architecture chosen in params (ScorerParams, common/config/model_params.py) plus what training fills in.
    """

    backbone: str  # hub name or local directory (a relative path resolves against the working directory)
    vocab_size: int | None = None  # resize the token embeddings to this (a tokenizer with added tokens)

    def problems(self) -> dict[str, str]:
        problems = super().problems()
        if self.vocab_size is not None and self.vocab_size < 1:
            problems["vocab_size"] = f"{self.vocab_size} (must be None or >= 1)"
        return problems


def _unwrap(backbone: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def find_encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of `model` (a transformers model or a peft wrapper of one), bottom to top."""
    base = _unwrap(model)
    for path in _LAYER_PATHS:
        module: object = base
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    raise ValueError(
        f"cannot find the encoder layers of {type(base).__name__}: none of {', '.join(_LAYER_PATHS)} is a "
        "non-empty ModuleList; add its layout to common/models/scorer.py _LAYER_PATHS"
    )


def find_embeddings(model: nn.Module) -> nn.Module:
    """The embeddings block (`embeddings` on BERT-like models and DeBERTa), else the input embeddings."""
    base = _unwrap(model)
    embeddings = getattr(base, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else base.get_input_embeddings()


@torch.no_grad()
def reinitialise_layers(backbone: PreTrainedModel, layers: list[nn.Module]) -> None:
    """Re-initialise `layers` in place with the backbone's own `_init_weights`.

    transformers 5 marks every tensor loaded from a checkpoint `_is_hf_initialized`, and its init
    functions skip marked tensors, so `_init_weights` alone would leave the pretrained weights in place.
    The marks are cleared first.
    """
    for layer in layers:
        for module in layer.modules():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if getattr(tensor, "_is_hf_initialized", False):
                    tensor._is_hf_initialized = False
            backbone._init_weights(module)


def _enable_checkpointing(backbone: PreTrainedModel) -> None:
    """Non-reentrant activation checkpointing (renamed in transformers 5.x; the old name is deprecated)."""
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _fp32_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies for safetensors: floats in fp32, every tensor its own storage (tied weights cloned)."""
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        out[key] = (tensor.float() if tensor.is_floating_point() else tensor).contiguous().clone()
    return out


def _save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    with atomic_write(path) as tmp:
        save_file(_fp32_tensors(state), str(tmp), metadata={"format": "pt"})


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """Load `state` into `module`; any missing or unexpected key is an error naming the file."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: the {what} weights do not match the model built from {CONFIG_FILE} "
            f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'}). The directory was saved "
            "by another version or with another config; re-save it from the trained model."
        )
    module.load_state_dict(state, strict=True)


def read_config(path: str | Path) -> ScorerConfig:
    """A ScorerConfig from its JSON file, with unknown keys reported by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a directory written by EssayScorer.save")
    values = json.loads(path.read_text(encoding="utf-8"))
    known = {f.name for f in dataclasses.fields(ScorerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a ScorerConfig has {sorted(known)}")
    return ScorerConfig(**values)


class EssayScorer(nn.Module):
    """Backbone -> pooling -> head. `forward` gives the head's logits; `predict` gives scores on 1-6.

    Args:
        config: the model's settings.
        backbone: a transformers model to use instead of loading `config.backbone` (tests, benchmarks,
            `load`); it is converted to fp32 and then treated exactly like a loaded one.
    """

    def __init__(self, config: ScorerConfig, backbone: PreTrainedModel | None = None):
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = AutoModel.from_pretrained(config.backbone, dtype=torch.float32, local_files_only=True)
        if any(p.dtype != torch.float32 for p in backbone.parameters()):
            log.info("converting the backbone to fp32 (training weights are always fp32)")
            backbone = backbone.float()
        self.pretrained_vocab_size = backbone.get_input_embeddings().num_embeddings
        if config.vocab_size is not None and config.vocab_size != self.pretrained_vocab_size:
            log.info("resizing token embeddings %d -> %d", self.pretrained_vocab_size, config.vocab_size)
            backbone.resize_token_embeddings(config.vocab_size)
        layers = find_encoder_layers(backbone)
        if config.reinit_layers > len(layers):
            raise ValueError(f"reinit_layers={config.reinit_layers} but the backbone has {len(layers)} layers")
        if config.reinit_layers:
            log.info("re-initialising the top %d of %d encoder layers", config.reinit_layers, len(layers))
            reinitialise_layers(backbone, layers[-config.reinit_layers :])
        if config.freeze_embeddings:
            find_embeddings(backbone).requires_grad_(False)
        if config.gradient_checkpointing:
            _enable_checkpointing(backbone)
        if config.lora_r > 0:
            backbone = self._wrap_lora(backbone, config, self.pretrained_vocab_size)
        self.backbone = backbone
        hidden_size = _unwrap(backbone).config.hidden_size
        self.pooling: Pooling = build_pooling(config.pooling, hidden_size, len(layers))
        self.head: Head = HEADS.build(config.head, self.pooling.out_dim, config.dropout, config.n_dropout_samples)
        self.training_loss: Loss = loss_for(config.head, config.loss)()
        self.train()  # from_pretrained returns the backbone in eval mode; a new model starts in train mode

    @staticmethod
    def _wrap_lora(backbone: PreTrainedModel, config: ScorerConfig, pretrained_vocab_size: int) -> nn.Module:
        """LoRA adapters on `lora_target_modules`; the rows of tokens added by resizing the vocabulary (the newline
        token) train too (peft's trainable tokens), since their random rows would otherwise stay as they are."""
        from peft import LoraConfig, get_peft_model

        added = list(range(pretrained_vocab_size, backbone.get_input_embeddings().num_embeddings))
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules),
                          trainable_token_indices=added or None)
        wrapped = get_peft_model(backbone, lora)
        trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        total = sum(p.numel() for p in wrapped.parameters())
        log.info("LoRA r=%d on %s: %d of %d backbone parameters trainable", config.lora_r,
                 ", ".join(config.lora_target_modules), trainable, total)
        return wrapped

    def encoder_layers(self) -> list[nn.Module]:
        """The backbone's transformer layers, bottom to top (for layer-wise LR decay and re-init)."""
        return find_encoder_layers(self.backbone)

    def embeddings_module(self) -> nn.Module:
        """The backbone's embeddings block (below the first encoder layer)."""
        return find_embeddings(self.backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                windows: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids and mask, (batch, seq) -> the head's logits: (batch, 1), (batch, 6) or (batch, 5).

        With `windows` (essays,) the rows are consecutive windows of the essays, that many each (the sliding-
        window collator's batches): each window is scored and an essay's logits are the mean of its windows'.
        """
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        pooled = self.pooling(out.hidden_states, attention_mask)
        head_dtype = next(self.head.parameters()).dtype
        logits = self.head(pooled.to(head_dtype))
        if windows is None:
            return logits
        windows = windows.to(logits.device)
        owner = torch.repeat_interleave(torch.arange(len(windows), device=logits.device), windows)
        summed = torch.zeros(len(windows), logits.shape[1], dtype=logits.dtype, device=logits.device)
        return summed.index_add(0, owner, logits) / windows.to(logits.dtype).unsqueeze(1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured training loss of `logits` against hard scores (batch,) or soft labels (batch, 6)."""
        return self.training_loss(self.head, logits, target)

    @torch.no_grad()
    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, windows: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores on the 1-6 scale (batch,) and class probabilities (batch, 6) or None, both fp32.

        Runs in eval mode (no dropout) whatever the current mode, and restores the mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            logits = self(input_ids, attention_mask, windows).float()
        finally:
            self.train(was_training)
        return self.head.predict(logits), self.head.probs(logits)

    def save(self, directory: str | Path) -> None:
        """Write the model to `directory` (see the module docstring); `scorer.json` is written last."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.config.lora_r > 0:
            with staged_dir(directory / ADAPTER_DIR) as tmp:
                # Resized embeddings are saved below as new rows only; "auto" would look the base up on the hub.
                self.backbone.save_pretrained(str(tmp), save_embedding_layers=False)
            state = {f"pooling.{k}": v for k, v in self.pooling.state_dict().items()}
            state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
            embeddings = self.backbone.get_input_embeddings().weight
            if embeddings.shape[0] > self.pretrained_vocab_size:
                state[NEW_TOKENS_KEY] = embeddings[self.pretrained_vocab_size :]
            _save_tensors(directory / HEAD_FILE, state)
        else:
            with staged_dir(directory / BACKBONE_CONFIG_DIR) as tmp:
                _unwrap(self.backbone).config.save_pretrained(str(tmp))
            _save_tensors(directory / WEIGHTS_FILE, self.state_dict())
        write_json(directory / CONFIG_FILE, asdict(self.config))
        log.info("saved %s scorer to %s", "LoRA" if self.config.lora_r > 0 else "fully fine-tuned", directory)

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             base_backbone: str | None = None) -> EssayScorer:
        """A saved scorer in eval mode on `device`; `dtype=torch.float16` (or bf16) is for inference only.

        A LoRA scorer needs its base backbone: `base_backbone` if given, else `config.backbone`, where a
        relative path is tried against `directory` first (a bundle that ships the base beside the
        adapters) and then against the working directory.
        """
        directory = Path(directory)
        config = read_config(directory / CONFIG_FILE)
        if config.lora_r > 0:
            base = base_backbone or config.backbone
            if not Path(base).is_absolute() and (directory / base / "config.json").is_file():
                base = str((directory / base).resolve())
            config = dataclasses.replace(config, backbone=base)
        # Weights come from the files: no re-init, no checkpointing, adapters attached below.
        build = dataclasses.replace(config, reinit_layers=0, gradient_checkpointing=False, lora_r=0)
        if config.lora_r == 0:
            backbone_config = AutoConfig.from_pretrained(directory / BACKBONE_CONFIG_DIR, local_files_only=True)
            backbone = AutoModel.from_config(backbone_config, dtype=torch.float32)
            model = cls(build, backbone=backbone)
            _load_strict(model, load_file(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, "model")
        else:
            from peft import PeftModel

            model = cls(build)
            state = load_file(directory / HEAD_FILE)
            new_rows = state.pop(NEW_TOKENS_KEY, None)
            embeddings = model.backbone.get_input_embeddings().weight
            n_new = embeddings.shape[0] - model.pretrained_vocab_size
            if (new_rows.shape[0] if new_rows is not None else 0) != max(n_new, 0):
                raise ValueError(
                    f"{directory / HEAD_FILE}: holds {0 if new_rows is None else new_rows.shape[0]} added-token "
                    f"embedding rows but {config.backbone} resized to vocab_size={config.vocab_size} adds "
                    f"{max(n_new, 0)}; is config.backbone the base this adapter was trained on?"
                )
            if new_rows is not None:
                with torch.no_grad():
                    embeddings[model.pretrained_vocab_size :] = new_rows
            model.backbone = PeftModel.from_pretrained(model.backbone, str(directory / ADAPTER_DIR))
            pooling_state = {k.removeprefix("pooling."): v for k, v in state.items() if k.startswith("pooling.")}
            head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
            stray = sorted(k for k in state if not k.startswith(("pooling.", "head.")))
            if stray:
                raise ValueError(f"{directory / HEAD_FILE}: unexpected keys {stray}")
            _load_strict(model.pooling, pooling_state, directory / HEAD_FILE, "pooling")
            _load_strict(model.head, head_state, directory / HEAD_FILE, "head")
        model.config = config
        return model.to(device=device, dtype=dtype).eval()
