"""Where a stage computes and in what precision: the one place training, MLM and inference resolve both.

- `resolve_device("auto" | "cpu" | "cuda")`: CUDA when torch sees a GPU (auto), else the CPU; asking for
  CUDA without one is an error that says so.
- `inference_devices`: every visible GPU for inference (Kaggle's 2 x T4), else the CPU.
- `resolve_mixed_precision`: what training autocasts to: bf16 on GPUs that support it, fp16 on older ones
  (T4, P100; the engine adds the GradScaler), nothing on the CPU. Weights stay fp32 in every case.
- `autocast_dtype`: the dtype inference autocasts to.
"""

from __future__ import annotations

import logging

import torch

from common.core.errors import PipelineError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


class DeviceError(PipelineError, ValueError):
    """A device or precision that this machine cannot give; the message says which to ask for."""


def resolve_device(device: str) -> torch.device:
    """The device a single-process stage computes on."""
    if device not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device=cuda but torch sees no CUDA GPU: use device=auto (or cpu)")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def inference_devices(device: str) -> list[torch.device]:
    """Every visible GPU for "auto"/"cuda" when CUDA is there, else the CPU."""
    if resolve_device(device).type == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 on older GPUs (T4, P100), 'no' on CPU."""
    if requested not in MIXED_PRECISION:
        raise DeviceError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {requested!r}")
    if device.type != "cuda":
        if requested in ("fp16", "bf16"):
            log.warning("mixed_precision=%s ignored on %s: training in fp32", requested, device.type)
        return "no"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of inference precision `precision` ("auto", "fp32", "fp16", "bf16") on `device`,
    or None for plain fp32. "auto" is fp16 on CUDA (T4 and P100 have no bf16) and fp32 on the CPU."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
