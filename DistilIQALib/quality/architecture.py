"""The network's hyper-parameters as a record, and the named presets (data, no PyTorch): a weights file stores
the exact record its model was built with (:mod:`.model` builds the network from it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Tuple


@dataclass(frozen=True)
class Architecture:
    """Hyper-parameters of the network (the paper's values are the defaults)."""

    stem_channels: Tuple[int, ...] = (8, 16, 32, 64, 128)
    stem_strides: Tuple[int, ...] = (1, 1, 1, 1, 1)
    stem_padding: int = 0
    embed_channels: int = 3
    crop_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    input_size: int = 512
    #: Windowed copies of the slice the network reads (the first is the W350/L40 window; more, e.g. a brain
    #: window, are further channels).
    input_channels: int = 1

    def to_dict(self) -> Dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Architecture:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown architecture parameters: {', '.join(sorted(unknown))}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def stem_output_size(self) -> int:
        """Side (pixels) of the feature map after the stem and its 2x2 stride-2 conv."""
        size = self.input_size
        for stride in self.stem_strides:
            size = (size + 2 * self.stem_padding - 3) // stride + 1
        return (size - 2) // 2 + 1

    def token_grid(self) -> int:
        """Patches per side after the centre crop."""
        return self.effective_crop() // self.patch_size

    def effective_crop(self) -> int:
        size = self.stem_output_size()
        crop = min(self.crop_size, size)
        return crop - crop % self.patch_size


PRESETS: Dict[str, Architecture] = {
    "paper": Architecture(),
    "fast": Architecture(
        stem_channels=(8, 16, 48), stem_strides=(1, 2, 2), stem_padding=1, embed_channels=96,
        crop_size=56, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_dim=768,
    ),
    "tiny": Architecture(
        stem_channels=(8, 16), stem_strides=(1, 2), stem_padding=1, embed_channels=32,
        crop_size=56, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_dim=128,
    ),
}


def architecture_from_preset(name: str, **overrides: Any) -> Architecture:
    """The named preset, optionally with some fields changed (e.g. ``input_size``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
