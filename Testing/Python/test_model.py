import numpy as np
import pytest
import torch

from DistilIQALib.quality.model import PRESETS, build_model, score_from_outputs
from DistilIQALib.quality.scoring import Scorer
from DistilIQALib.training.phantoms import phantom_volume
from DistilIQALib.volume import CTVolume


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("num_outputs", [1, 5])
def test_output_shapes_for_every_preset(preset, num_outputs):
    model = build_model(PRESETS[preset], num_outputs).eval()
    with torch.inference_mode():
        outputs = model(torch.rand(1, 1, 512, 512))
    assert outputs.shape == (1, num_outputs)
    assert torch.isfinite(outputs).all()


def test_paper_preset_geometry():
    arch = PRESETS["paper"]
    # 512 - 5 * 2 = 502 after the unpadded 3x3 convs, 251 after the 2x2 stride-2 conv
    assert arch.stem_output_size() == 251
    assert arch.effective_crop() == 224 and arch.token_grid() == 14
    model = build_model(arch)
    assert model.stem(torch.rand(1, 1, 512, 512)).shape == (1, 3, 224, 224)
    assert sum(p.numel() for p in model.blocks.parameters()) == pytest.approx(85.05e6, rel=0.01)


def test_student_score_is_mean_of_outputs():
    outputs = torch.tensor([[0.2, 0.4, 0.6, 0.8, 1.0]])
    assert score_from_outputs(outputs).item() == pytest.approx(0.6)




def test_tiny_model_really_learns(tiny_training):
    _, losses = tiny_training
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


def test_noisier_slices_score_lower(tiny_weights):
    """The briefly trained model ranks the same anatomy lower with more noise."""
    clean = phantom_volume(3, size=256, pixel_mm=1.4, seed=11)
    rng = np.random.default_rng(2)
    stack = np.concatenate([clean + rng.standard_normal(clean.shape).astype(np.float32) * sd for sd in (2.0, 70.0)])
    scores = Scorer(str(tiny_weights), device="cpu").score_volume(CTVolume(stack, spacing_mm=(1.4, 1.4, 2.5)))
    assert scores.score[:3].mean() > scores.score[3:].mean()
