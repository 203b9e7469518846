"""Weights files: one ``.safetensors`` file holding the tensors and a JSON metadata record.

The safetensors format is a JSON header plus raw tensor bytes, so loading a file never
runs code (unlike pickle-based ``.pt``/``.pth`` checkpoints, which are refused). The
metadata says everything needed to use the model without guessing: architecture and
preset, number of outputs, what the score means (name, range, direction), window and
input size, adequacy bands, dose-equivalent calibration, training provenance and the
format version.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import torch

from ..errors import WeightsError
from .model import QualityViT, build_model
from .model_info import (  # noqa: F401  (the model's description was part of this module)
    DEFAULT_MODEL_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    WEIGHTS_ENV,
    WEIGHTS_SUFFIX,
    ModelInfo,
    ScoreDefinition,
    default_weights_path,
    file_id,
    read_info,
    resolve_weights,
)


def save_weights(path: os.PathLike[str] | str, model: QualityViT, info: ModelInfo, half: bool = False) -> Path:
    """Write ``model`` and ``info`` to one safetensors file (float16 tensors if ``half``)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        tensors[name] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    save_file(tensors, str(temporary), metadata={METADATA_KEY: info.to_json()})
    os.replace(temporary, path)
    return path


def load_weights(path: os.PathLike[str] | str, device: torch.device | str = "cpu") -> Tuple[QualityViT, ModelInfo]:
    """Load a weights file into a model in eval mode, float32, on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_info(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path} is corrupt ({error})") from None
    model = build_model(info.architecture, info.num_outputs)
    try:
        model.load_state_dict({name: tensor.float() if tensor.is_floating_point() else tensor
                               for name, tensor in tensors.items()})
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise WeightsError(f"{path}: the tensors do not fit preset {info.preset!r} ({first})") from None
    return model.to(device).eval(), info
