import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from DistilIQALib.errors import NoDefaultModelError, WeightsError
from DistilIQALib.quality.model import PRESETS, build_model
from DistilIQALib.quality.weights import (
    FORMAT_VERSION,
    ModelInfo,
    load_weights,
    read_info,
    resolve_weights,
    save_weights,
)


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
    with pytest.raises(WeightsError, match=r"do not fit preset 'fast' \(Error\(s\) in loading state_dict for "
                                           r"QualityViT:\)$"):
        load_weights(_rewrite_metadata(good, tmp_path / "wrong.safetensors", claim_fast))
    with pytest.raises(WeightsError, match="newer DistilIQA"):
        read_info(_rewrite_metadata(good, tmp_path / "new.safetensors",
                                    lambda r: r.update(format_version=FORMAT_VERSION + 1)))
    with pytest.raises(WeightsError, match="unknown model preset"):
        read_info(_rewrite_metadata(good, tmp_path / "odd.safetensors", lambda r: r.update(preset="gigantic")))


def test_missing_default_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILIQA_WEIGHTS", str(tmp_path / "none.safetensors"))
    with pytest.raises(NoDefaultModelError, match=f"^no trained DistilIQA model is installed at "
                                                  f"{tmp_path / 'none.safetensors'}; pass a weights file with "
                                                  f"--weights$"):
        resolve_weights(None)


def test_every_metadata_field_survives_the_file(tmp_path):
    """What the scorer relies on comes back exactly as written: window, input size, score, bands, table."""
    from DistilIQALib.quality.model import architecture_from_preset
    from DistilIQALib.quality.preprocessing import Window
    from DistilIQALib.quality.weights import ScoreDefinition

    architecture = architecture_from_preset("tiny", input_size=128)
    score = ScoreDefinition(name="radiologist", description="mean of 5 readers", minimum=0.0, maximum=4.0,
                            higher_is_better=False)
    bands = {"bands": [{"name": "good", "min_score": 3.0}, {"name": "poor", "min_score": None}], "reasoning": "r"}
    table = {"score": [0.0, 4.0], "dose_fraction": [0.1, 1.0]}
    info = ModelInfo(preset="tiny", architecture=architecture, num_outputs=3, score=score,
                     window=Window(width_hu=1500.0, level_hu=-600.0), adequacy=bands, dose_calibration=table,
                     provenance={"purpose": "test", "epoch": 7})
    path = save_weights(tmp_path / "deep" / "er" / "m.safetensors", build_model(architecture, 3), info)
    assert not (tmp_path / "deep" / "er" / "m.safetensors.partial").exists()
    loaded = read_info(path)
    assert loaded.architecture == architecture and loaded.input_size == 128 and loaded.num_outputs == 3
    assert (loaded.window.width_hu, loaded.window.level_hu) == (1500.0, -600.0)
    assert vars(loaded.score) == vars(score)
    assert loaded.adequacy == bands and loaded.dose_calibration == table
    assert loaded.provenance == {"purpose": "test", "epoch": 7} and loaded.preset == "tiny"
    assert loaded.weights_id == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_absent_optional_fields_take_the_documented_defaults(tmp_path):
    good = save_weights(tmp_path / "good.safetensors", build_model(PRESETS["tiny"], 1), _info(num_outputs=1))

    def strip(record):
        for key in ("window", "num_outputs", "score", "adequacy", "dose_calibration"):
            del record[key]
        record["provenance"] = None
    info = read_info(_rewrite_metadata(good, tmp_path / "bare.safetensors", strip))
    assert (info.window.width_hu, info.window.level_hu) == (350.0, 40.0) and info.num_outputs == 1
    assert info.score.name == "ssim" and (info.score.minimum, info.score.maximum) == (0.0, 1.0)
    assert info.adequacy is None and info.dose_calibration is None and info.provenance == {}
    half = read_info(_rewrite_metadata(good, tmp_path / "level.safetensors",
                                       lambda r: r.update(window={"level_hu": -600})))
    assert (half.window.width_hu, half.window.level_hu) == (350.0, -600.0)
    custom = read_info(_rewrite_metadata(good, tmp_path / "custom.safetensors", lambda r: r.update(preset="custom")))
    assert custom.preset == "custom"


def test_unreadable_model_descriptions_are_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    good = save_weights(tmp_path / "good.safetensors", build_model(PRESETS["tiny"], 1), _info(num_outputs=1))
    cases = [
        (lambda r: r.update(format_version=0), "unknown weights format version 0"),
        (lambda r: r.pop("format_version"), "unknown weights format version 0"),
        (lambda r: r["architecture"].update(wings=2), r"invalid architecture description \(unknown architecture "
                                                      r"parameters: wings\)"),
        (lambda r: r.pop("architecture"), "invalid architecture description"),
    ]
    cases.append((lambda r: r.pop("preset"), r"unknown model preset '' \(known: paper, fast, tiny\)$"))
    for n, (change, message) in enumerate(cases):
        path = tmp_path / f"case{n}.safetensors"
        with pytest.raises(WeightsError, match=f"^{path}: {message}"):
            read_info(_rewrite_metadata(good, path, change))
    tensors = {"x": torch.zeros(2)}
    save_file(tensors, str(tmp_path / "text.safetensors"), metadata={"distiliqa": "{not json"})
    with pytest.raises(WeightsError, match="the model description in the weights file is not valid JSON"):
        read_info(tmp_path / "text.safetensors")
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"author": "someone"})
    with pytest.raises(WeightsError, match="is a safetensors file but not a DistilIQA model"):
        read_info(tmp_path / "other.safetensors")
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a DistilIQA model"):
        read_info(tmp_path / "plain.safetensors")


def _header_file(path, length, body=b""):
    path.write_bytes(length.to_bytes(8, "little") + body)
    return path


def test_files_that_are_not_safetensors_are_refused_unread(tmp_path):
    not_weights = "is not a DistilIQA weights file or is corrupt"
    seven = tmp_path / "seven.safetensors"
    seven.write_bytes(b"\x10" * 7)  # shorter than the 8-byte header length
    with pytest.raises(WeightsError, match=f"^{seven} {not_weights}$"):
        read_info(seven)
    cases = {
        "zero.safetensors": (0, b"{}"),
        "one.safetensors": (1, b"{}"),  # a header of one byte cannot be a JSON object
        "long.safetensors": (40, b'{"a": 1}'),  # longer than the file
        "list.safetensors": (2, b"[]"),  # JSON, but not an object
        "binary.safetensors": (4, b"\xff\xfe\x00\x01"),
    }
    cases["past_end.safetensors"] = (12, b'{"a": 1}')  # 4 bytes longer than the file holds
    for name, (length, body) in cases.items():
        path = _header_file(tmp_path / name, length, body)
        with pytest.raises(WeightsError, match=f"^{path} {not_weights}$"):
            read_info(path)
    exact = _header_file(tmp_path / "exact.safetensors", 2, b"{}")  # a valid header that fills the file
    with pytest.raises(WeightsError, match="not a DistilIQA model"):
        read_info(exact)


@pytest.mark.parametrize("start, pickle_like", [(b"\x80\x02", True), (b"\x80\x05", True), (b"PK\x03\x04", True),
                                                (b"\x80\x01", False), (b"\x80\x06", False), (b"PK\x05\x06", False)])
@pytest.mark.parametrize("tail", [b"", b"\xff" * 30])
def test_pickles_and_zip_checkpoints_are_named_as_such(tmp_path, start, pickle_like, tail):
    """Even cut to its first bytes, a pickle is named as one."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(start + tail)
    message = "pickle/PyTorch checkpoint, which can run code" if pickle_like else "not a DistilIQA weights file"
    with pytest.raises(WeightsError, match=message):
        read_info(path)


def test_half_precision_keeps_integer_tensors_and_loads_as_float32(tmp_path):
    from safetensors import safe_open

    model = build_model(PRESETS["tiny"], 1).eval()
    half = save_weights(tmp_path / "half.safetensors", model, _info(num_outputs=1), half=True)
    with safe_open(str(half), "pt") as handle:
        dtypes = {name: handle.get_tensor(name).dtype for name in handle.keys()}
    assert {dtype for name, dtype in dtypes.items() if "num_batches_tracked" not in name} == {torch.float16}
    assert {dtype for name, dtype in dtypes.items() if "num_batches_tracked" in name} == {torch.int64}
    loaded, _ = load_weights(half)
    assert not loaded.training
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_default_model_location_and_override(tmp_path, monkeypatch):
    import DistilIQALib
    from DistilIQALib.quality import weights

    monkeypatch.delenv("DISTILIQA_WEIGHTS", raising=False)
    # Resources/ sits beside the DistilIQALib package, in the source tree and in Slicer's installed tree
    shipped = Path(DistilIQALib.__file__).resolve().parents[1] / "Resources/Models/distiliqa_student.safetensors"
    assert weights.default_weights_path() == shipped and shipped.is_file()
    monkeypatch.setenv("DISTILIQA_WEIGHTS", str(tmp_path / "mine.safetensors"))
    assert weights.default_weights_path() == tmp_path / "mine.safetensors"
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    assert resolve_weights(None) == tmp_path / "mine.safetensors"
    assert resolve_weights(str(tmp_path / "given.safetensors")) == tmp_path / "given.safetensors"


def test_the_model_is_put_on_the_device_asked_for(tmp_path):
    path = save_weights(tmp_path / "m.safetensors", build_model(PRESETS["tiny"], 1), _info(num_outputs=1))
    model, _ = load_weights(path, torch.device("meta"))  # a device without data: no GPU needed to see the move
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.device.type for p in load_weights(path)[0].parameters()} == {"cpu"}


def test_the_file_states_its_input_size_for_other_readers(tmp_path):
    from safetensors import safe_open

    from DistilIQALib.quality.model import architecture_from_preset

    architecture = architecture_from_preset("tiny", input_size=128)
    path = save_weights(tmp_path / "m.safetensors", build_model(architecture, 1),
                        _info(architecture=architecture, num_outputs=1))
    with safe_open(str(path), "pt") as handle:
        record = json.loads(handle.metadata()["distiliqa"])
    assert record["input_size"] == 128 and record["window"] == {"width_hu": 350.0, "level_hu": 40.0}
    assert record["format_version"] == FORMAT_VERSION and record["num_outputs"] == 1


def test_a_noise_reference_is_kept_and_a_version_1_file_still_reads(tmp_path):
    reference = {"intercept": 5.408, "per_cm": 0.0458, "size": "noise_equivalent_diameter",
                 "routine_range": [0.353, 2.65], "patients": 12}
    model = build_model(PRESETS["tiny"], 1).eval()
    path = save_weights(tmp_path / "m.safetensors", model, _info(num_outputs=1, noise_reference=reference))
    assert read_info(path).noise_reference == reference
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:  # stored under its documented key
        assert json.loads(handle.metadata()["distiliqa"])["noise_reference"] == reference

    def version_1(record):  # what the first format wrote: no noise reference
        record["format_version"] = 1
        del record["noise_reference"]

    old = read_info(_rewrite_metadata(path, tmp_path / "v1.safetensors", version_1))
    assert old.format_version == 1 and old.noise_reference is None and old.num_outputs == 1
