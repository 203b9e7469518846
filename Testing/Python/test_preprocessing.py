import numpy as np
import pytest
import torch

from DistilIQALib.quality.preprocessing import DEFAULT_WINDOW, Window, fit_to_input, prepare_batch, window_to_unit


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


def test_window_of_numpy_gives_float32_and_of_torch_keeps_the_device_dtype():
    unit = window_to_unit(np.array([[-135.0, 40.0], [215.0, 390.0]], dtype=np.float64))
    assert unit.dtype == np.float32 and isinstance(unit, np.ndarray)
    np.testing.assert_array_equal(unit, [[0.0, 0.5], [1.0, 1.0]])
    hu = torch.tensor([-2000, -135, 40, 5000], dtype=torch.int16)
    result = window_to_unit(hu, Window(width_hu=100.0, level_hu=-85.0))  # -135..-35 HU
    assert result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), [0.0, 0.0, 1.0, 1.0])
    assert hu.tolist() == [-2000, -135, 40, 5000]  # the input is left as it was


@pytest.mark.parametrize("height, width, top, left",
                         [(5, 8, 1, 0), (8, 5, 0, 1), (6, 8, 1, 0), (3, 8, 2, 0), (8, 2, 0, 3)])
def test_non_square_slices_are_centred_in_air_with_odd_margins_below_and_right(height, width, top, left):
    unit = torch.arange(1, height * width + 1, dtype=torch.float32).reshape(1, 1, height, width)
    fitted = fit_to_input(unit, 8)
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., top:top + height, left:left + width] = unit
    assert torch.equal(fitted, expected)


def test_enlarging_interpolates_linearly_between_pixel_centres():
    # align_corners=False: output pixel j of 2n sits at input coordinate (j + 0.5) / 2 - 0.5, clamped to the ends.
    row = np.array([0.0, 1.0, 0.25, 0.75, 0.5], dtype=np.float32)
    unit = torch.from_numpy(np.tile(row, (5, 1))).reshape(1, 1, 5, 5)
    fitted = fit_to_input(unit, 10)[0, 0].numpy()
    position = np.clip((np.arange(10) + 0.5) / 2 - 0.5, 0, 4)
    np.testing.assert_allclose(fitted[3], np.interp(position, np.arange(5), row), atol=1e-6)


def test_shrinking_averages_with_an_antialiasing_filter():
    """Halving with antialiasing weighs 4 neighbours (1, 3, 3, 1) / 8 per axis: white noise of SD 1 keeps an SD
    of sqrt(20 / 64) per axis, i.e. 20 / 64 overall (point sampling between two pixels would keep 1 / 2 per axis)."""
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 1024, 1024)).astype(np.float32))
    fitted = fit_to_input(noise, 512)[..., 8:-8, 8:-8]  # away from the edges, where the filter is cut
    assert fitted.std().item() == pytest.approx(20 / 64, rel=0.03)


def test_prepare_batch_takes_a_single_slice_and_moves_it_to_the_device():
    hu = np.full((64, 64), 215, dtype=np.int16)
    batch = prepare_batch(hu, input_size=64, device=torch.device("cpu"))
    assert batch.shape == (1, 1, 64, 64) and torch.all(batch == 1.0)
    wide = prepare_batch(torch.full((2, 32, 64), -600.0), Window(1500.0, -600.0), input_size=64)
    assert wide.shape == (2, 1, 64, 64)
    assert torch.all(wide[:, :, 16:48] == 0.5) and torch.all(wide[:, :, :16] == 0) and torch.all(wide[:, :, 48:] == 0)


def test_slices_go_to_the_device_asked_for_and_a_tensor_already_on_one_stays_there():
    """Numpy slices are copied to the device the scorer asks for; a tensor already on a device is used where it
    is, never through the host. torch's 'meta' device stands in for a GPU (shapes and dtypes, no data)."""
    meta = torch.device("meta")
    batch = prepare_batch(np.zeros((2, 30, 40), np.int16), input_size=64, device=meta)
    assert batch.device == meta and batch.shape == (2, 1, 64, 64) and batch.dtype == torch.float32
    already_there = torch.zeros((1, 64, 64), dtype=torch.int16, device=meta)
    assert prepare_batch(already_there, input_size=64).device == meta
