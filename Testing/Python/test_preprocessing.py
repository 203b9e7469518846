import numpy as np
import pytest
import torch

from DistilIQALib.preprocessing import DEFAULT_WINDOW, Window, fit_to_input, prepare_batch, window_to_unit


def test_window_golden_values():
    hu = np.array([-1000, -135, 40, 100, 215, 1000], dtype=np.int16)
    expected = np.array([0.0, 0.0, 0.5, 235.0 / 350.0, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(window_to_unit(hu), expected, atol=1e-7)
    np.testing.assert_allclose(window_to_unit(torch.from_numpy(hu)).numpy(), expected, atol=1e-7)
    assert DEFAULT_WINDOW.lower_hu == -135.0 and DEFAULT_WINDOW.upper_hu == 215.0


def test_other_window():
    window = Window(width_hu=1500, level_hu=-600)
    np.testing.assert_allclose(window_to_unit(np.array([-1350.0, -600.0, 150.0]), window), [0.0, 0.5, 1.0])


def test_fit_leaves_512_square_unchanged():
    unit = torch.rand(2, 1, 512, 512)
    assert torch.equal(fit_to_input(unit, 512), unit)


def test_fit_pads_non_square_centred_with_air():
    unit = torch.full((1, 1, 300, 512), 0.7)
    fitted = fit_to_input(unit, 512)
    assert fitted.shape == (1, 1, 512, 512)
    assert torch.all(fitted[..., :106, :] == 0) and torch.all(fitted[..., 406:, :] == 0)
    assert torch.allclose(fitted[..., 106:406, :], torch.tensor(0.7))


def test_fit_resizes_other_matrix_keeping_values():
    ramp = torch.linspace(0, 1, 256).repeat(256, 1).reshape(1, 1, 256, 256)
    fitted = fit_to_input(ramp, 512)
    assert fitted.shape == (1, 1, 512, 512)
    assert fitted.mean().item() == pytest.approx(0.5, abs=1e-3)
    constant = fit_to_input(torch.full((1, 1, 1024, 1024), 0.25), 512)
    assert torch.allclose(constant, torch.tensor(0.25))


def test_prepare_batch_from_int16_volume_slice():
    hu = np.full((3, 128, 128), 40, dtype=np.int16)
    batch = prepare_batch(hu, input_size=512)
    assert batch.dtype == torch.float32 and batch.shape == (3, 1, 512, 512)
    assert torch.allclose(batch, torch.tensor(0.5))
