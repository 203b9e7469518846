"""The MRML bridge against real MRML (the slicer-core wheel): geometry, result nodes, reruns, save/reload,
and slice-view pictures composed by Slicer's own slice logic."""

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")  # slicer-core needs Python >= 3.10
vtk = pytest.importorskip("vtk")

from DistilIQALib.quality.model import PRESETS  # noqa: E402
from DistilIQALib.quality.scoring import Scorer, SliceScores  # noqa: E402
from DistilIQALib.quality.weights import ModelInfo  # noqa: E402
from DistilIQALib.slicer_bridge import mrml  # noqa: E402
from DistilIQALib.training.phantoms import phantom_volume  # noqa: E402

SPACING = (2.8, 2.6, 5.0)  # x, y, z in mm
ORIGIN_LPS = (-170.0, -160.0, -40.0)
BANDS = {"bands": [{"name": "good", "min_score": 0.8}, {"name": "borderline", "min_score": 0.6},
                   {"name": "inadequate", "min_score": None}]}


def _coronal_node(scene, axial):
    """``axial`` (z, y, x) stored as coronal slices with a non-identity IJK-to-RAS matrix."""
    nz = axial.shape[0]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "coronal CT")
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(axial[::-1].transpose(1, 0, 2)))
    matrix = vtk.vtkMatrix4x4()
    columns = {0: (-1, 0, 0), 1: (0, 0, -1), 2: (0, -1, 0)}  # i -> L, j -> inferior, k -> posterior (RAS)
    spacing = {0: SPACING[0], 1: SPACING[2], 2: SPACING[1]}
    for c, direction in columns.items():
        for r in range(3):
            matrix.SetElement(r, c, direction[r] * spacing[c])
    top = (-ORIGIN_LPS[0], -ORIGIN_LPS[1], ORIGIN_LPS[2] + (nz - 1) * SPACING[2])
    for r in range(3):
        matrix.SetElement(r, 3, top[r])
    node.SetIJKToRASMatrix(matrix)
    return node


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(scope="module")
def axial_hu():
    return np.rint(phantom_volume(8, size=96, pixel_mm=3.0, noise_sd_hu=10, seed=4)).astype(np.int16)


def test_volume_node_geometry_becomes_axial_with_z(scene, axial_hu):
    volume = mrml.volume_from_node(_coronal_node(scene, axial_hu))
    np.testing.assert_array_equal(volume.hu, axial_hu)
    assert volume.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_allclose(volume.z_mm(), ORIGIN_LPS[2] + np.arange(8) * SPACING[2], atol=1e-6)
    np.testing.assert_allclose(volume.origin_mm, ORIGIN_LPS, atol=1e-6)


def test_node_from_volume_round_trips_geometry(scene, axial_hu):
    volume = mrml.volume_from_node(_coronal_node(scene, axial_hu))
    again = mrml.volume_from_node(mrml.node_from_volume(scene, volume, "copy"))
    np.testing.assert_array_equal(again.hu, axial_hu)
    np.testing.assert_allclose(again.z_mm(), volume.z_mm(), atol=1e-6)
    np.testing.assert_allclose(again.origin_mm, volume.origin_mm, atol=1e-6)
    np.testing.assert_allclose(again.direction, volume.direction, atol=1e-9)


def _scores_for(volume, tiny_weights):
    scores = Scorer(str(tiny_weights), device="cpu").score_volume(volume)
    return scores


def _count(scene, class_name):
    return scene.GetNumberOfNodesByClass(class_name)


def test_results_table_charts_map_and_rerun(scene, axial_hu, tiny_weights, tmp_path):
    ct = _coronal_node(scene, axial_hu)
    volume = mrml.volume_from_node(ct)
    scores = _scores_for(volume, tiny_weights)
    nodes = mrml.show_results(ct, scores, volume)
    table = nodes.table.GetTable()
    assert table.GetNumberOfRows() == 8
    assert [table.GetColumnName(c) for c in range(7)] == ["slice_index", "z_mm", "score", "score_spread",
                                                          "noise_hu", "dose_equivalent", "adequacy"]
    np.testing.assert_allclose([table.GetValue(r, 2).ToDouble() for r in range(8)], scores.score, atol=1e-5)
    np.testing.assert_allclose([table.GetValue(r, 1).ToDouble() for r in range(8)], volume.z_mm(), atol=1e-3)
    # tiny_weights' bands: good from 0.8, borderline from 0.5
    assert [table.GetValue(r, 6).ToString() for r in range(8)] == [
        "good" if s >= 0.8 else "borderline" if s >= 0.5 else "inadequate" for s in scores.score]
    assert nodes.score_chart.GetNumberOfPlotSeriesNodes() == 1
    assert nodes.adequacy_chart.GetNumberOfPlotSeriesNodes() == 3  # score + 2 thresholds
    # quality map: slice k holds the score of slice k, at the same S coordinate
    values = slicer.util.arrayFromVolume(nodes.quality_map)
    np.testing.assert_allclose(values[:, 0, 0], scores.score, atol=1e-6)
    matrix = vtk.vtkMatrix4x4()
    nodes.quality_map.GetIJKToRASMatrix(matrix)
    centres = [matrix.MultiplyPoint((0.5, 0.5, k, 1.0))[2] for k in range(8)]
    np.testing.assert_allclose(centres, volume.z_mm(), atol=1e-6)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(ct))
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(nodes.table)) == parent
    table_doses = np.interp(scores.score[3], sorted(scores.info.dose_calibration["score"]),
                            [d for _, d in sorted(zip(scores.info.dose_calibration["score"],
                                                      scores.info.dose_calibration["dose_fraction"]))])
    assert mrml.score_text_at(nodes.table, float(volume.z_mm()[3]) + 0.4).startswith(
        f"slice 3: score {scores.score[3]:.3f}, dose {table_doses:.2f} (")
    assert mrml.score_text_at(nodes.table, float(volume.z_mm()[-1]) + 50.0) == ""
    counts = {c: _count(scene, c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode",
                                           "vtkMRMLScalarVolumeNode", "vtkMRMLColorTableNode")}
    again = mrml.show_results(ct, scores, volume)
    assert {c: _count(scene, c) for c in counts} == counts
    assert again.table.GetID() == nodes.table.GetID()


#: Per-slice scores of the 8-slice phantom, chosen by hand to fall in every band (0.8 and 0.6 bounds).
HAND_SCORES = np.array([0.95, 0.85, 0.8, 0.7, 0.6, 0.59, 0.3, 0.9], dtype=np.float32)


def _hand_scores(volume):
    info = ModelInfo(preset="tiny", architecture=PRESETS["tiny"], adequacy=BANDS,
                     dose_calibration={"score": [0.0, 1.0], "dose_fraction": [0.0, 1.0]})
    return SliceScores(slice_index=np.arange(8), z_mm=volume.z_mm(), score=HAND_SCORES,
                       outputs=HAND_SCORES[:, None], noise_hu=np.full(8, 12.5, dtype=np.float32), info=info)


def _column(table, name):
    array = table.GetColumnByName(name)
    return [array.GetValue(r) for r in range(table.GetNumberOfRows())]


def test_scene_save_and_reload_keeps_results(scene, axial_hu, tmp_path):
    """Saved and loaded back, the scene shows the same numbers, threshold lines and quality-map colours."""
    ct = _coronal_node(scene, axial_hu)
    volume = mrml.volume_from_node(ct)
    nodes = mrml.show_results(ct, _hand_scores(volume), volume)
    colors = mrml.quality_color_table(scene)
    for node in (ct, nodes.table, nodes.quality_map, colors):
        node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        file_name = f"{node.GetName().replace(' ', '_')}.{storage.GetDefaultWriteFileExtension()}"
        storage.SetFileName(str(tmp_path / file_name))
        assert storage.WriteData(node)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Import()

    tables = reloaded.GetNodesByClassByName("vtkMRMLTableNode", nodes.table.GetName())
    assert tables.GetNumberOfItems() == 1
    table = tables.GetItemAsObject(0).GetTable()
    np.testing.assert_allclose([float(v) for v in _column(table, "score")], HAND_SCORES, atol=1e-5)
    np.testing.assert_allclose([float(v) for v in _column(table, "z_mm")], volume.z_mm(), atol=1e-3)
    np.testing.assert_allclose([float(v) for v in _column(table, "dose_equivalent")], HAND_SCORES, atol=6e-4)
    assert [str(v) for v in _column(table, "adequacy")] == ["good", "good", "good", "borderline", "borderline",
                                                           "inadequate", "inadequate", "good"]
    assert [float(v) for v in _column(table, "good_from")] == [0.8] * 8
    assert [float(v) for v in _column(table, "borderline_from")] == [0.6] * 8

    charts = reloaded.GetNodesByClassByName("vtkMRMLPlotChartNode", nodes.adequacy_chart.GetName())
    chart = charts.GetItemAsObject(0)
    lines = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [line.GetYColumnName() for line in lines] == ["score", "good_from", "borderline_from"]
    assert all(line.GetXColumnName() == "z_mm" for line in lines)
    assert [line.GetLineStyle() == line.LineStyleDash for line in lines] == [False, True, True]
    np.testing.assert_allclose([line.GetColor() for line in lines[1:]], [(0.15, 0.6, 0.3), (0.85, 0.6, 0.1)])

    maps = reloaded.GetNodesByClassByName("vtkMRMLScalarVolumeNode", nodes.quality_map.GetName())
    quality_map = maps.GetItemAsObject(0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(quality_map)[:, 0, 0], HAND_SCORES, atol=1e-6)
    display = quality_map.GetDisplayNode()
    # Score range 0..1 with the inadequate threshold 0.6 mid-scale: shown from 2 * 0.6 - 1 = 0.2 to 1.
    assert display.GetWindowLevelMin() == pytest.approx(0.2) and display.GetWindowLevelMax() == pytest.approx(1.0)
    color_node = display.GetColorNode()
    assert color_node.GetName() == colors.GetName() and color_node.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    # Red (low) -> yellow -> green (high): index i of 255 is at t = i / 255; green rises as 2t up to 0.8 in the
    # lower half, red falls as 0.9 * 2 (1 - t) in the upper half. The file keeps 8 bits per channel.
    expected = {0: (0.9, 0.0, 0.1), 64: (0.9, 128 / 255, 0.1), 192: (0.9 * 2 * (1 - 192 / 255), 0.8, 0.1),
                255: (0.0, 0.8, 0.1)}
    for index, colour in expected.items():
        assert color_node.GetColor(index, rgba)
        np.testing.assert_allclose(rgba[:3], colour, atol=0.5 / 255 + 1e-9)


def test_slice_views_show_the_bad_slab_in_red(scene, tmp_path):
    """Axial and coronal pictures of a CT with a bad slab, composed as Slicer's slice views do."""
    hu = np.rint(phantom_volume(30, size=96, pixel_mm=3.6, noise_sd_hu=10, seed=1)).astype(np.int16)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(ct, hu)
    matrix = vtk.vtkMatrix4x4()
    for axis, spacing in enumerate((-3.6, -3.6, 5.0)):  # LPS voxel axes in RAS
        matrix.SetElement(axis, axis, spacing)
    ct.SetIJKToRASMatrix(matrix)
    volume = mrml.volume_from_node(ct)
    score = np.full(30, 0.95)
    score[12:18] = 0.3  # the bad slab
    info = ModelInfo(preset="tiny", architecture=PRESETS["tiny"], adequacy=BANDS)
    scores = SliceScores(slice_index=np.arange(30), z_mm=volume.z_mm(), score=score, outputs=score[:, None],
                         noise_hu=np.full(30, 10.0), info=info, source="CT")
    nodes = mrml.show_results(ct, scores, volume)
    renderer = mrml.SliceRenderer(scene)
    z = volume.z_mm()
    anterior = -float(volume.slice_centres_mm()[0, 1])  # RAS A of the volume's centre
    bad = renderer.render(ct, nodes.quality_map, "Axial", float(z[15]), tmp_path / "axial_bad.png", 0.5)
    good = renderer.render(ct, nodes.quality_map, "Axial", float(z[5]), tmp_path / "axial_good.png", 0.5)
    coronal = renderer.render(ct, nodes.quality_map, "Coronal", anterior, tmp_path / "coronal.png", 0.5)
    for path in ("axial_bad.png", "axial_good.png", "coronal.png"):
        assert (tmp_path / path).read_bytes()[:4] == b"\x89PNG"

    def redness(pixels):
        return pixels[..., 0].astype(float) - pixels[..., 1].astype(float)

    middle = np.s_[100:220, 100:220]
    assert redness(bad)[middle].mean() > 40 and redness(good)[middle].mean() < -40
    # coronal: the slab's rows are red across the body, the rows above and below are green
    column_band = redness(coronal)[:, 140:180].mean(axis=1)
    red_rows = np.flatnonzero(column_band > 40)
    green_rows = np.flatnonzero(column_band < -40)
    assert len(red_rows) > 5 and len(green_rows) > 4 * len(red_rows) / 2
    assert red_rows.min() > green_rows.min() and red_rows.max() < green_rows.max()  # a band inside the body


def test_batch_results_shown_for_a_loaded_series_without_rescoring(scene, axial_hu, tiny_weights, tmp_path):
    """A series scored by a batch run, then loaded as a node stored in another slice order: the stored
    scores land on the node's slices by z, exactly as scoring the node itself would put them."""
    from DistilIQALib.archive.batch import run_batch, stored_scores
    from DistilIQALib.io.dicom_writing import write_series

    uid = "1.2.826.0.1.3680043.8.498.777"
    write_series(axial_hu, tmp_path / "archive" / "ct", spacing_mm=SPACING, origin_mm=ORIGIN_LPS, series_uid=uid)
    scorer = Scorer(str(tiny_weights), device="cpu")
    assert run_batch(tmp_path / "archive", tmp_path / "store.sqlite", scorer).scored == 1
    stored = stored_scores(tmp_path / "store.sqlite", uid, str(tiny_weights))
    assert len(stored.score) == 8 and stored.info.weights_id == scorer.info.weights_id
    ct = _coronal_node(scene, axial_hu)  # its k axis runs inferior, unlike the DICOM files
    direct = scorer.score_volume(mrml.volume_from_node(ct))
    reversed_rows = SliceScores(slice_index=stored.slice_index[::-1], z_mm=stored.z_mm[::-1],
                                score=stored.score[::-1], outputs=stored.outputs[::-1],
                                noise_hu=stored.noise_hu[::-1], info=stored.info)
    for scores in (stored, reversed_rows):
        table = mrml.show_stored_results(ct, scores).table.GetTable()
        np.testing.assert_allclose([table.GetValue(r, 2).ToDouble() for r in range(8)], direct.score, atol=1e-4)
        np.testing.assert_allclose([table.GetValue(r, 1).ToDouble() for r in range(8)], direct.z_mm, atol=1e-3)
        np.testing.assert_allclose([table.GetValue(r, 3).ToDouble() for r in range(8)], direct.score_spread,
                                   atol=1e-4)
    shorter = SliceScores(slice_index=stored.slice_index[:5], z_mm=stored.z_mm[:5], score=stored.score[:5],
                          outputs=stored.outputs[:5], noise_hu=stored.noise_hu[:5], info=stored.info)
    with pytest.raises(ValueError, match="has 8 axial slices but the stored results have 5"):
        mrml.show_stored_results(ct, shorter)
    with pytest.raises(Exception, match="no stored scores"):
        stored_scores(tmp_path / "store.sqlite", "1.2.3.4", str(tiny_weights))


def test_volume_file_for_the_scoring_process_keeps_voxels_and_geometry(scene, axial_hu, tmp_path):
    """The panel writes the CT node to NRRD for the child process; the engine's reader must see the same axial
    slices at the same z as the node itself gives."""
    from DistilIQALib.io.reading import read_volume

    ct = _coronal_node(scene, axial_hu)
    path = mrml.write_volume_file(ct, tmp_path / "volume.nrrd")
    assert ct.GetStorageNode() is None and scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0
    read = read_volume(path)
    expected = mrml.volume_from_node(ct)
    np.testing.assert_array_equal(read.hu, expected.hu)
    np.testing.assert_allclose(read.z_mm(), expected.z_mm(), atol=1e-4)
    np.testing.assert_allclose(read.spacing_mm, SPACING, atol=1e-6)
    assert b"encoding: raw" in (tmp_path / "volume.nrrd").read_bytes()[:1000]


def _views(scene, count=3):
    return [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(count)]


def test_overlay_toggle_keeps_the_users_window_level(scene, axial_hu):
    ct = _coronal_node(scene, axial_hu)
    composites = _views(scene)
    quality_map = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "map")
    mrml.show_in_slice_views(scene, ct, quality_map, 0.35)
    assert {c.GetForegroundVolumeID() for c in composites} == {quality_map.GetID()}
    ct.GetDisplayNode().SetWindowLevel(1500.0, -600.0)  # the user switches to a lung window
    mrml.set_overlay(scene, None)
    assert {c.GetForegroundVolumeID() for c in composites} == {None}
    mrml.set_overlay(scene, quality_map, 0.6)
    assert {c.GetForegroundOpacity() for c in composites} == {0.6}
    assert {c.GetBackgroundVolumeID() for c in composites} == {ct.GetID()}
    display = ct.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1500.0, -600.0)


def test_plot_click_moves_only_for_a_series_of_the_results_table(scene, axial_hu):
    ct = _coronal_node(scene, axial_hu)
    volume = mrml.volume_from_node(ct)
    score = np.linspace(0.4, 0.9, 8)
    info = ModelInfo(preset="tiny", architecture=PRESETS["tiny"], adequacy=BANDS)
    nodes = mrml.show_results(ct, SliceScores(slice_index=np.arange(8), z_mm=volume.z_mm(), score=score,
                                              outputs=score[:, None], noise_hu=np.full(8, 9.0), info=info), volume)
    score_series = scene.GetNodeByID(nodes.score_chart.GetNthPlotSeriesNodeID(0))
    other_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "someone else's table")
    other = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "someone else's series")
    other.SetAndObserveTableNodeID(other_table.GetID())
    z = volume.z_mm()
    assert mrml.selected_z(scene, nodes.table, [score_series.GetID()], [[5]]) == pytest.approx(z[5], abs=1e-3)
    assert mrml.selected_z(scene, nodes.table, [other.GetID()], [[2]]) is None
    assert mrml.selected_z(scene, nodes.table, [other.GetID(), score_series.GetID()], [[2], [6]]) == pytest.approx(
        z[6], abs=1e-3)
    assert mrml.selected_z(scene, nodes.table, [score_series.GetID()], [[]]) is None


def test_dose_equivalent_verdicts_drive_the_adequacy_chart_and_map(scene, axial_hu, tiny_weights):
    from DistilIQALib.quality.interpretation import dose_equivalent_adequacy
    from DistilIQALib.quality.regions import given_regions
    from DistilIQALib.quality.weights import read_info

    ct = _coronal_node(scene, axial_hu)
    volume = mrml.volume_from_node(ct)
    info = read_info(tiny_weights)
    info.noise_reference = {"intercept": float(np.log(1000.0)), "per_cm": 0.0}  # 1000 HU^2 mm at any size
    info.adequacy = dose_equivalent_adequacy(0.5, 0.2)
    noise = np.array([10.0, 14.0, 19.9, 28.0, 40.0, np.nan, 12.0, 30.0], dtype=np.float32)
    # an older single reference covers the chest and abdomen: the slices are given as abdomen
    scores = SliceScores(slice_index=np.arange(8), z_mm=volume.z_mm(), score=np.linspace(0.9, 0.5, 8),
                         outputs=np.zeros((8, 3), np.float32), noise_hu=noise, info=info,
                         diameter_cm=np.full(8, 25.0, np.float32), thickness_mm=5.0,
                         regions=given_regions("abdomen", 8))
    expected = np.clip(1000.0 / (noise.astype(np.float64) ** 2 * 5.0), 0.05, 4.0)  # NaN stays NaN
    nodes = mrml.show_results(ct, scores, volume)
    table = nodes.table.GetTable()
    column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    dose = np.array([table.GetValue(r, column["dose_equivalent"]).ToDouble() for r in range(8)])
    np.testing.assert_allclose(dose, expected, atol=5e-4)  # the table keeps 3 decimals
    assert [table.GetValue(r, column["adequacy"]).ToString() for r in range(8)] == [
        "good", "good", "good", "borderline", "inadequate", "unknown", "good", "borderline"]
    assert [table.GetValue(0, column[name]).ToDouble() for name in ("good_from", "borderline_from",
                                                                    "above_routine_from")] == [0.5, 0.2, 2.0]
    assert table.GetValue(0, column["water_diameter_cm"]).ToDouble() == 25.0
    assert [table.GetValue(r, column["region"]).ToString() for r in (0, 7)] == ["abdomen", "abdomen"]
    assert [table.GetValue(r, column["above_routine"]).ToInt() for r in range(8)] == [0] * 8  # 2.0 is not above 2
    chart = nodes.adequacy_chart
    assert chart.GetNumberOfPlotSeriesNodes() == 4 and chart.GetYAxisTitle().startswith("dose equivalent")
    assert chart.GetNthPlotSeriesNode(3).GetYColumnName() == "above_routine_from"
    assert chart.GetNthPlotSeriesNode(0).GetYColumnName() == "dose_equivalent"
    values = slicer.util.arrayFromVolume(nodes.quality_map)[:, 0, 0]
    np.testing.assert_allclose(values, np.nan_to_num(expected, nan=0.0), rtol=1e-6)
    assert mrml.score_text_at(nodes.table, float(volume.z_mm()[3])) == (
        f"slice 3: score {scores.score[3]:.3f}, dose 0.26 (borderline)")


def test_a_learned_models_table_charts_and_map_show_what_set_each_verdict(scene, axial_hu):
    from .learned import ARTEFACT_SLICE, DRIVERS, NO_VERDICT_SLICE, learned_scores

    ct = _coronal_node(scene, axial_hu[:6])
    volume = mrml.volume_from_node(ct)
    scores = learned_scores(z_mm=volume.z_mm())
    learned = scores.verdicts.learned_dose_equivalent
    nodes = mrml.show_results(ct, scores, volume)
    table = nodes.table.GetTable()
    assert [str(v) for v in _column(table, "driver")] == DRIVERS
    np.testing.assert_allclose([float(v) for v in _column(table, "effective_noise_hu")],
                               [10.5, 46.0, 18.0, 12.0, 30.0, np.nan])
    np.testing.assert_allclose([float(v) for v in _column(table, mrml.LEARNED_DOSE_COLUMN)], learned)
    assert np.isnan(float(_column(table, "score")[NO_VERDICT_SLICE]))  # no verdict, no learned dose equivalent
    # the adequacy chart: the dose equivalent from the noise, the learned one beside it, then the band lines
    chart = nodes.adequacy_chart
    names = [chart.GetNthPlotSeriesNode(n).GetYColumnName() for n in range(chart.GetNumberOfPlotSeriesNodes())]
    assert names[:2] == ["dose_equivalent", mrml.LEARNED_DOSE_COLUMN] and names[-1] == "above_routine_from"
    assert nodes.score_chart.GetYAxisTitle().startswith("learned dose equivalent")
    # the map shows what each verdict rests on: the learned dose equivalent where artefacts set it (0.125 at
    # slice 1), the one from the noise elsewhere, 0 where there is none
    expected = np.nan_to_num(np.where(np.array(DRIVERS) == "artefacts", learned, scores.dose_equivalent))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(nodes.quality_map)[:, 0, 0], expected, rtol=1e-6)
    assert expected[ARTEFACT_SLICE] == pytest.approx(0.125) and expected[NO_VERDICT_SLICE] == 0.0
    z = volume.z_mm()
    assert mrml.score_text_at(nodes.table, float(z[ARTEFACT_SLICE])) == (
        "slice 1: score 0.125, dose 2.00 (inadequate, set by artefacts)")
    assert mrml.score_text_at(nodes.table, float(z[NO_VERDICT_SLICE])) == "slice 4: no score (unknown)"
    # stored results shown again keep the effective noise, hence the learned verdicts
    again = mrml.show_stored_results(ct, scores)
    assert [str(v) for v in _column(again.table.GetTable(), "driver")] == DRIVERS
    assert again.table.GetID() == nodes.table.GetID()


def test_exam_table_node_holds_the_exam_rows_and_is_replaced_on_rerun():
    from DistilIQALib.dose.cms import NOT_CERTIFIED
    from DistilIQALib.dose.exams import EXAM_COLUMNS

    scene = slicer.vtkMRMLScene()
    row = dict.fromkeys(EXAM_COLUMNS)
    row.update(study_uid="1.2.3", study_date="20260315", exam_category="Chest Routine Dose", ctdivol_mgy=8.25,
               global_noise_hu=21.5, cms_out_of_range="no", cms_reason="global noise 21.5 HU < 49")
    node = mrml.show_exam_table(scene, [row, {**row, "study_uid": "1.2.4", "ctdivol_mgy": None}])
    table = node.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(EXAM_COLUMNS)
    assert table.GetNumberOfRows() == 2
    assert node.GetCellText(0, EXAM_COLUMNS.index("exam_category")) == "Chest Routine Dose"
    assert table.GetColumnByName("ctdivol_mgy").GetValue(0) == pytest.approx(8.25)
    assert np.isnan(table.GetColumnByName("ctdivol_mgy").GetValue(1))
    assert node.GetAttribute("DistilIQA.about") == NOT_CERTIFIED
    again = mrml.show_exam_table(scene, [row])
    assert again is node and node.GetTable().GetNumberOfRows() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


def test_the_exam_table_is_shown_in_the_table_views_that_follow_the_selection():
    """The panel's way of showing the exam table, on real MRML: the selection node's active table, propagated by
    the application logic to every table view that follows the selection (Slicer's PropagateTableSelection,
    Libs/MRML/Logic/vtkMRMLApplicationLogic.cxx:481-501 at v5.8.1, :470-489 on main 583e9b37), in the layout
    Slicer's script repository uses to show a table (SlicerLayoutFourUpTableView = 34,
    Libs/MRML/Core/vtkMRMLLayoutNode.h:118 at v5.8.1, :156 on main)."""
    from DistilIQALib.dose.exams import EXAM_COLUMNS

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    follows = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    pinned = scene.AddNewNodeByClass("vtkMRMLTableViewNode")
    pinned.SetDoPropagateTableSelection(False)
    other = scene.AddNewNodeByClass("vtkMRMLTableNode", "another table")
    pinned.SetTableNodeID(other.GetID())
    node = mrml.show_exam_table(scene, [dict.fromkeys(EXAM_COLUMNS, None) | {"study_uid": "1.2.3"}])
    mrml.show_table_in_views(logic, node)
    assert logic.GetSelectionNode().GetActiveTableID() == node.GetID()
    assert follows.GetTableNodeID() == node.GetID()
    assert pinned.GetTableNodeID() == other.GetID()  # a view pinned to its table keeps it
    assert slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView == 34
    with pytest.raises(RuntimeError, match="no selection node"):
        mrml.show_table_in_views(slicer.vtkMRMLApplicationLogic(), node)
