"""Devices and precision: the one place training, MLM and inference resolve them."""

import pytest
import torch

from common.core.devices import (
    DeviceError,
    autocast_dtype,
    inference_devices,
    resolve_device,
    resolve_mixed_precision,
)
from common.core.errors import PipelineError


def test_devices_on_this_machine():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        assert len(inference_devices("auto")) == torch.cuda.device_count()
    else:
        assert resolve_device("auto") == torch.device("cpu")
        assert inference_devices("auto") == [torch.device("cpu")]
        with pytest.raises(PipelineError, match="no CUDA GPU"):
            inference_devices("cuda")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_training_precision():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_mixed_precision("auto", cpu) == "no"
    assert resolve_mixed_precision("bf16", cpu) == "no"  # ignored on the CPU, with a warning
    assert resolve_mixed_precision("fp16", gpu) == "fp16"
    assert resolve_mixed_precision("no", gpu) == "no"
    if torch.cuda.is_available():
        assert resolve_mixed_precision("auto", gpu) == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        resolve_mixed_precision("fp8", cpu)


def test_inference_precision():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.float16  # T4 / P100: no bf16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None
    assert autocast_dtype("bf16", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cpu")) is torch.float16  # asked for explicitly
