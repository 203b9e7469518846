import json
import pickle
from pathlib import Path

import pytest
import torch

from DistilIQALib.errors import NoDefaultModelError, WeightsError
from DistilIQALib.model import PRESETS, build_model
from DistilIQALib.weights import FORMAT_VERSION, ModelInfo, load_weights, read_info, resolve_weights, save_weights


def _info(**changes):
    values = dict(preset="tiny", architecture=PRESETS["tiny"], num_outputs=2, provenance={"purpose": "test"})
    values.update(changes)
    return ModelInfo(**values)


def test_round_trip_gives_identical_outputs_and_metadata(tmp_path):
    model = build_model(PRESETS["tiny"], 2).eval()
    info = _info(adequacy={"bands": [{"name": "good", "min_score": 0.9}, {"name": "bad", "min_score": None}]},
                 dose_calibration={"score": [0.5, 1.0], "dose_fraction": [0.1, 1.0]})
    path = save_weights(tmp_path / "m.safetensors", model, info)
    loaded, loaded_info = load_weights(path)
    x = torch.rand(2, 1, 512, 512)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert loaded_info.architecture == PRESETS["tiny"] and loaded_info.num_outputs == 2
    assert loaded_info.adequacy == info.adequacy and loaded_info.dose_calibration == info.dose_calibration
    assert loaded_info.window.width_hu == 350 and loaded_info.window.level_hu == 40
    assert loaded_info.score.name == "ssim" and loaded_info.score.higher_is_better
    assert len(loaded_info.weights_id) == 16 and loaded_info.format_version == FORMAT_VERSION


def test_half_precision_file_is_smaller_and_close(tmp_path):
    model = build_model(PRESETS["tiny"], 1).eval()
    full = save_weights(tmp_path / "full.safetensors", model, _info(num_outputs=1))
    half = save_weights(tmp_path / "half.safetensors", model, _info(num_outputs=1), half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_weights(half)
    x = torch.rand(1, 1, 512, 512)
    with torch.inference_mode():
        assert torch.allclose(model(x), loaded(x), atol=5e-3)


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    for name, writer in (("evil.pt", lambda p: torch.save({"x": exploit}, p)),
                         ("evil.safetensors", lambda p: p.write_bytes(pickle.dumps(exploit)))):
        path = tmp_path / name
        writer(path)
        with pytest.raises(WeightsError, match="pickle"):
            load_weights(path)
        assert not marker.exists()


def test_header_length_that_starts_like_a_pickle_still_loads(tmp_path):
    """A safetensors header whose length's first byte is 0x80 (a pickle's first byte) is valid."""
    model = build_model(PRESETS["tiny"], 1)
    for padding in range(256):
        path = save_weights(tmp_path / "m.safetensors", model, _info(num_outputs=1, provenance={"pad": "x" * padding}))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length with first byte 0x80")
    loaded, info = load_weights(path)
    assert info.provenance["pad"] == "x" * padding


def test_corrupt_and_truncated_files(tmp_path):
    model = build_model(PRESETS["tiny"], 1)
    good = save_weights(tmp_path / "good.safetensors", model, _info(num_outputs=1))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        load_weights(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(WeightsError, match="not a DistilIQA weights file"):
        load_weights(garbage)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def _rewrite_metadata(source: Path, target: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        record = json.loads(handle.metadata()["distiliqa"])
    change(record)
    save_file(tensors, str(target), metadata={"distiliqa": json.dumps(record)})
    return target


def test_wrong_preset_newer_format_and_unknown_preset(tmp_path):
    good = save_weights(tmp_path / "good.safetensors", build_model(PRESETS["tiny"], 1), _info(num_outputs=1))

    def claim_fast(record):
        record["preset"] = "fast"
        record["architecture"] = PRESETS["fast"].to_dict()
    with pytest.raises(WeightsError, match="do not fit preset 'fast'"):
        load_weights(_rewrite_metadata(good, tmp_path / "wrong.safetensors", claim_fast))
    with pytest.raises(WeightsError, match="newer DistilIQA"):
        read_info(_rewrite_metadata(good, tmp_path / "new.safetensors",
                                    lambda r: r.update(format_version=FORMAT_VERSION + 1)))
    with pytest.raises(WeightsError, match="unknown model preset"):
        read_info(_rewrite_metadata(good, tmp_path / "odd.safetensors", lambda r: r.update(preset="gigantic")))


def test_missing_default_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILIQA_WEIGHTS", str(tmp_path / "none.safetensors"))
    with pytest.raises(NoDefaultModelError, match="no trained DistilIQA model"):
        resolve_weights(None)
