"""The bridge between the engine and Slicer's scene (MRML): the only module that touches MRML.

It imports only ``slicer`` MRML classes, ``slicer.util`` and VTK, never Qt or the Slicer
application, and takes the scene from the nodes it is given, so it runs against the
``slicer-core`` wheel as well as inside Slicer.

* :func:`volume_from_node`: a scalar volume node as a :class:`~DistilIQALib.volume.CTVolume`
  (RAS -> LPS, any orientation turned into axial slices, no copy of the voxels).
* :func:`node_from_volume`: the reverse, for volumes the engine read itself.
* :func:`write_volume_file`: a volume node written as Slicer writes it (uncompressed NRRD), for a scoring
  process that runs outside Slicer's process.
* :func:`dicom_series_of`: the folder and series of the DICOM files a volume node was loaded from, so that the
  scoring process reads them with their headers (kernel, reconstruction, CTDIvol, each slice's thickness).
* :func:`show_results`: per-slice results as a table node, a score plot chart, a dose-adequacy
  chart and a quality-map volume (each axial slice filled with its score) displayed with a
  red-to-green colour table; all placed beside the CT in the subject hierarchy. Running it again
  for the same CT updates those nodes instead of adding new ones.
* :func:`show_stored_results`: the same for a series' stored batch results, matched by z.
* :class:`SliceRenderer`: the picture a slice view shows (CT background at W350/L40, quality
  map foreground), composed by Slicer's own slice logic and written to PNG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from ..quality.interpretation import (
    DRIVER_ARTEFACTS,
    adequacy_measure,
    band_threshold,
    lowest_adequate_value,
    region_references,
)
from ..quality.region_labels import SliceRegions
from ..quality.results import SliceScores
from ..volume import CTVolume, to_axial

#: What Slicer's DICOM plugins set on a volume node they load: the SOP Instance UID of each slice's file, in
#: the node's slice order, space-separated ("Unknown" where a file has none).
DICOM_INSTANCES_ATTRIBUTE = "DICOM.instanceUIDs"
ATTRIBUTE_SOURCE = "DistilIQA.SourceVolumeID"
ATTRIBUTE_ROLE = "DistilIQA.Role"
COLOR_TABLE_NAME = "DistilIQA quality"
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(node) -> CTVolume:
    """A scalar volume node's voxels (HU) and geometry as an axial :class:`CTVolume`."""
    array = slicer.util.arrayFromVolume(node)  # (k, j, i), a view of the node's image data
    if array.ndim != 3:
        raise ValueError(f"{node.GetName()} is not a single-component 3D volume")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix_to_numpy(matrix)
    spacing = np.asarray(node.GetSpacing(), dtype=np.float64)
    direction_lps = _RAS_FROM_LPS @ (ijk_to_ras[:3, :3] / spacing)
    origin_lps = _RAS_FROM_LPS @ ijk_to_ras[:3, 3]
    hu, spacing_mm, origin_mm, direction = to_axial(array, spacing, origin_lps, direction_lps)
    return CTVolume(hu=hu, spacing_mm=spacing_mm, origin_mm=origin_mm, direction=direction,
                    source=node.GetName(), metadata={"node_id": node.GetID()})


def node_from_volume(scene, volume: CTVolume, name: str = "CT"):
    """A new scalar volume node holding ``volume`` (voxels copied, geometry in RAS), e.g. a file read by the
    engine outside Slicer's own readers."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.hu))
    node.SetIJKToRASMatrix(_ijk_to_ras(volume, volume.spacing_mm))
    return node


def write_volume_file(node, path) -> str:
    """Write ``node``'s voxels and geometry to ``path`` (``.nrrd``, uncompressed: writing a 300-slice CT takes a
    fraction of a second, compressing it several seconds) with Slicer's own volume storage node; returns the
    path. The node's scene and its storage settings are left as they were."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(node):
        raise OSError(f"could not write {node.GetName()} to {path}")
    return str(path)


def dicom_series_of(node, file_for_instance: Callable[[str], str]) -> Optional[Tuple[str, str]]:
    """``(folder, SeriesInstanceUID)`` of the DICOM files ``node`` was loaded from (``file_for_instance``: the DICOM
    database's lookup of a file by SOP Instance UID), where the engine reads that folder's series back as exactly
    those files, one per slice of the node: then the scoring process reads the scanner's headers beside the
    pixels, which a volume file does not keep. ``None`` otherwise (a volume not loaded from DICOM, files moved or
    spread over folders, a series Slicer split or the folder holds more of)."""
    from ..io.reading import list_dicom_series

    uids = (node.GetAttribute(DICOM_INSTANCES_ATTRIBUTE) or "").split()
    image = node.GetImageData()
    if not uids or "Unknown" in uids or image is None or image.GetDimensions()[2] != len(uids):
        return None
    files = [file_for_instance(uid) or "" for uid in uids]
    if not all(os.path.isfile(name) for name in files):
        return None
    wanted = {os.path.realpath(name) for name in files}
    folders = {os.path.dirname(name) for name in wanted}
    if len(wanted) != len(uids) or len(folders) != 1:  # a file for two slices, or files in several folders
        return None
    folder = folders.pop()
    # the series the engine finds in that folder (a scan of its headers, so only once the cheap checks pass)
    matching = [series for series in list_dicom_series(Path(folder))
                if os.path.realpath(str(series["folder"])) == folder
                and {os.path.realpath(name) for name in series["files"]} == wanted]
    if len(matching) != 1:
        return None
    return folder, str(matching[0]["uid"])


def _ijk_to_ras(volume: CTVolume, spacing_mm) -> vtk.vtkMatrix4x4:
    """IJK-to-RAS of a grid with ``volume``'s axes, ``spacing_mm`` voxels and the same outer extent."""
    spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
    half_shift = 0.5 * (spacing_mm - np.asarray(volume.spacing_mm))
    direction = np.asarray(volume.direction)
    origin_lps = np.asarray(volume.origin_mm) + direction @ half_shift
    matrix = vtk.vtkMatrix4x4()
    ras_direction = _RAS_FROM_LPS @ direction
    ras_origin = _RAS_FROM_LPS @ origin_lps
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, ras_direction[r, c] * spacing_mm[c])
        matrix.SetElement(r, 3, ras_origin[r])
    return matrix


def _find_or_add(scene, class_name: str, source_node, role: str, name: str):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(ATTRIBUTE_SOURCE) == source_node.GetID() and node.GetAttribute(ATTRIBUTE_ROLE) == role:
            node.SetName(name)
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(ATTRIBUTE_SOURCE, source_node.GetID())
    node.SetAttribute(ATTRIBUTE_ROLE, role)
    return node


def quality_color_table(scene):
    """A continuous red (low) -> yellow -> green (high) colour table, created once per scene."""
    nodes = scene.GetNodesByClassByName("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    if nodes.GetNumberOfItems():
        return nodes.GetItemAsObject(0)
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for index in range(256):
        t = index / 255.0
        red = 1.0 if t < 0.5 else 2.0 * (1.0 - t)
        green = 2.0 * t if t < 0.5 else 0.8
        table.SetColor(index, f"q{index}", red * 0.9, green, 0.1, 1.0)
    return table


#: Column of the results table with a learned model's dose equivalent (present only for such a model).
LEARNED_DOSE_COLUMN = "learned_dose_equivalent"


def _learned_dose(scores: SliceScores) -> Optional[np.ndarray]:
    """A learned model's dose equivalent of each slice (NaN without a verdict); ``None`` for other models."""
    verdicts = scores.verdicts
    return None if verdicts is None else verdicts.learned_dose_equivalent


def _fill_table(table_node, scores: SliceScores, thresholds) -> None:
    """The per-slice rows (:meth:`SliceScores.rows`; ``driver``: what set the verdict, ``noise`` or ``artefacts``),
    a learned model's dose equivalent, and the band thresholds of each slice."""
    table = vtk.vtkTable()
    rows = scores.rows()
    columns = [("slice_index", vtk.vtkIntArray), ("z_mm", vtk.vtkDoubleArray), ("score", vtk.vtkDoubleArray),
               ("score_spread", vtk.vtkDoubleArray), ("noise_hu", vtk.vtkDoubleArray),
               ("dose_equivalent", vtk.vtkDoubleArray), ("adequacy", vtk.vtkStringArray),
               ("water_diameter_cm", vtk.vtkDoubleArray), ("region", vtk.vtkStringArray),
               ("above_routine", vtk.vtkIntArray), ("verdict_note", vtk.vtkStringArray),
               ("driver", vtk.vtkStringArray), ("effective_noise_hu", vtk.vtkDoubleArray)]
    fixed = len(columns)
    learned = _learned_dose(scores)
    extra = [] if learned is None else [(LEARNED_DOSE_COLUMN, learned)]
    columns += [(name, vtk.vtkDoubleArray) for name, _ in extra + list(thresholds)]
    arrays = {}
    for name, array_class in columns:
        array = array_class()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        arrays[name] = array
        table.AddColumn(array)
    for n, row in enumerate(rows):
        for name, _ in columns[:fixed]:
            value = row[name]
            if isinstance(arrays[name], vtk.vtkStringArray):
                arrays[name].SetValue(n, value or "")
            elif name == "above_routine":
                arrays[name].SetValue(n, int(bool(value)))
            else:
                arrays[name].SetValue(n, np.nan if value is None else value)
        for name, values in extra + list(thresholds):
            arrays[name].SetValue(n, float(values[n]))
    table_node.SetAndObserveTable(table)
    table_node.Modified()


def _thresholds(scores: SliceScores):
    """``(column, value per slice)`` of each band's lower bound, and of the start of "above routine", on the
    quantity the bands are on: per slice, since each body region has its own (NaN where a slice's region has
    none)."""
    info = scores.info
    count = len(scores.score)
    if adequacy_measure(info.adequacy) != "dose_equivalent" or not info.noise_reference:
        if not info.adequacy or not info.adequacy.get("bands"):
            return []
        return [(f"{band['name']}_from", np.full(count, band_threshold(band))) for band in info.adequacy["bands"]
                if band_threshold(band) is not None]
    references = region_references(info.noise_reference, info.adequacy)
    per_slice = [references.get(region) for region in scores.judged_region]
    names = []
    for reference in references.values():
        names += [band["name"] for band in reference["bands"] if band_threshold(band) is not None
                  and band["name"] not in names]
    columns = []
    for name in names:
        values = [next((band_threshold(b) for b in ref["bands"] if b["name"] == name), None) if ref else None
                  for ref in per_slice]
        columns.append((f"{name}_from", np.array([np.nan if v is None else v for v in values], dtype=np.float64)))
    above = [float(ref.get("above_routine_from", np.nan)) if ref else np.nan for ref in per_slice]
    columns.append(("above_routine_from", np.array(above, dtype=np.float64)))
    return columns


def _series(scene, source, role, name, table_node, y_column, color, dashed=False):
    series = _find_or_add(scene, "vtkMRMLPlotSeriesNode", source, role, name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName("z_mm")
    series.SetYColumnName(y_column)
    series.SetPlotType(series.PlotTypeScatter)
    series.SetColor(*color)
    series.SetMarkerStyle(series.MarkerStyleNone if dashed else series.MarkerStyleCircle)
    series.SetLineStyle(series.LineStyleDash if dashed else series.LineStyleSolid)
    return series


@dataclass
class ResultNodes:
    table: object
    score_chart: object
    adequacy_chart: object
    quality_map: object


def show_results(ct_node, scores: SliceScores, volume: Optional[CTVolume] = None) -> ResultNodes:
    """Create or update the result nodes of ``ct_node`` (see the module doc)."""
    scene = ct_node.GetScene()
    volume = volume or volume_from_node(ct_node)
    name = ct_node.GetName()
    info = scores.info
    thresholds = _thresholds(scores)
    on_dose = adequacy_measure(info.adequacy) == "dose_equivalent"
    table = _find_or_add(scene, "vtkMRMLTableNode", ct_node, "table", f"{name} DistilIQA scores")
    _fill_table(table, scores, thresholds)
    score_series = _series(scene, ct_node, "score series", f"{name} quality score", table, "score", (0.12, 0.3, 0.61))
    score_chart = _find_or_add(scene, "vtkMRMLPlotChartNode", ct_node, "score chart", f"{name} per-slice quality")
    score_chart.RemoveAllPlotSeriesNodeIDs()
    score_chart.AddAndObservePlotSeriesNodeID(score_series.GetID())
    # The noise series is offered in the scene for the user's own charts; the score chart shows the score alone.
    _series(scene, ct_node, "noise series", f"{name} noise (HU)", table, "noise_hu", (0.5, 0.5, 0.5))
    score_chart.SetTitle(f"DistilIQA: {name}")
    score_chart.SetXAxisTitle("z (mm)")
    learned = _learned_dose(scores) is not None
    score_chart.SetYAxisTitle("learned dose equivalent (fraction of a routine dose)" if learned else
                              f"{info.score.name} ({'higher' if info.score.higher_is_better else 'lower'} is better)")
    adequacy_chart = _find_or_add(scene, "vtkMRMLPlotChartNode", ct_node, "adequacy chart",
                                  f"{name} dose adequacy")
    adequacy_chart.RemoveAllPlotSeriesNodeIDs()
    measure_series = score_series
    if on_dose:  # the bands are on the dose equivalent: that is what the adequacy chart shows
        measure_series = _series(scene, ct_node, "dose series", f"{name} dose equivalent", table, "dose_equivalent",
                                 (0.12, 0.3, 0.61))
    adequacy_chart.AddAndObservePlotSeriesNodeID(measure_series.GetID())
    if on_dose and learned:  # a learned model's dose equivalent beside the one from the noise
        learned_series = _series(scene, ct_node, "learned dose series", f"{name} learned dose equivalent", table,
                                 LEARNED_DOSE_COLUMN, (0.83, 0.33, 0.0))
        adequacy_chart.AddAndObservePlotSeriesNodeID(learned_series.GetID())
    band_colors = [(0.15, 0.6, 0.3), (0.85, 0.6, 0.1), (0.75, 0.2, 0.2)]
    for n, (column, _) in enumerate(thresholds):  # the band lines
        color = (0.1, 0.35, 0.6) if column == "above_routine_from" else band_colors[min(n, len(band_colors) - 1)]
        line = _series(scene, ct_node, f"band {column}", f"{name} {column}", table, column, color, dashed=True)
        adequacy_chart.AddAndObservePlotSeriesNodeID(line.GetID())
    adequacy_chart.SetTitle(f"Dose adequacy: {name}")
    adequacy_chart.SetXAxisTitle("z (mm)")
    adequacy_chart.SetYAxisTitle("dose equivalent (fraction of a routine dose)" if on_dose else info.score.name)
    quality_map = _quality_map(scene, ct_node, volume, scores)
    _place_in_hierarchy(ct_node, [table, score_chart, adequacy_chart, quality_map])
    return ResultNodes(table, score_chart, adequacy_chart, quality_map)


def _reordered(values, order):
    """Per-slice ``values`` in ``order`` (one value for all, or ``None``, as it is)."""
    return values if values is None or np.ndim(values) == 0 else np.asarray(values)[order]


def show_stored_results(ct_node, scores: SliceScores) -> ResultNodes:
    """:func:`show_results` for scores made elsewhere (a batch run): each stored slice is matched to the
    node's axial slice at the same z, since the two readers need not order slices alike."""
    volume = volume_from_node(ct_node)
    z = volume.z_mm()
    if len(z) != len(scores.score):
        raise ValueError(f"{ct_node.GetName()} has {len(z)} axial slices but the stored results have "
                         f"{len(scores.score)}; score the volume again")
    order = np.argsort(scores.z_mm)[np.argsort(np.argsort(z))]
    if np.max(np.abs(scores.z_mm[order] - z)) > 0.5 * max(float(volume.spacing_mm[2]), 1e-3):
        raise ValueError(f"the stored slice positions do not match {ct_node.GetName()}'s; score the volume again")
    aligned = SliceScores(slice_index=np.arange(len(z)), z_mm=z, score=scores.score[order],
                          outputs=scores.outputs[order], noise_hu=scores.noise_hu[order], info=scores.info,
                          source=scores.source, device=scores.device, elapsed_s=scores.elapsed_s,
                          matrix=scores.matrix, spacing_mm=scores.spacing_mm,
                          diameter_cm=None if scores.diameter_cm is None else scores.diameter_cm[order],
                          thickness_mm=scores.thickness_mm, kernel=scores.kernel, manufacturer=scores.manufacturer,
                          series_description=scores.series_description,
                          thickness_per_slice_mm=_reordered(scores.thickness_per_slice_mm, order),
                          ssde_mgy=_reordered(scores.ssde_mgy, order),
                          ssde_upper_bound=scores.ssde_upper_bound,
                          effective_noise_hu=(None if scores.effective_noise_hu is None
                                              else scores.effective_noise_hu[order]),
                          regions=None if scores.regions is None else SliceRegions(
                              [scores.regions.region[n] for n in order], [scores.regions.reason[n] for n in order],
                              scores.regions.source))
    return show_results(ct_node, aligned, volume)


def _quality_map(scene, ct_node, volume: CTVolume, scores: SliceScores):
    """A volume with the CT's axial slicing and extent, 2x2 voxels per slice, each slice set to the quantity its
    verdict rests on: the score, or the dose equivalent when the bands are on it (0 where unknown); for a learned
    model, the learned dose equivalent on the slices whose verdict artefacts set."""
    node = _find_or_add(scene, "vtkMRMLScalarVolumeNode", ct_node, "quality map",
                        f"{ct_node.GetName()} DistilIQA quality map")
    nz, ny, nx = volume.hu.shape
    on_dose = adequacy_measure(scores.info.adequacy) == "dose_equivalent" and scores.dose_equivalent is not None
    per_slice = np.asarray(scores.score, dtype=np.float64)
    if on_dose:
        per_slice = np.asarray(scores.dose_equivalent, dtype=np.float64)
        learned = _learned_dose(scores)
        if learned is not None:
            per_slice = np.where([driver == DRIVER_ARTEFACTS for driver in scores.driver], learned, per_slice)
    per_slice = np.nan_to_num(per_slice, nan=0.0)
    values = np.repeat(per_slice.astype(np.float32)[:, None, None], 2, axis=1).repeat(2, axis=2)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(values))
    spacing = (nx * volume.spacing_mm[0] / 2.0, ny * volume.spacing_mm[1] / 2.0, volume.spacing_mm[2])
    node.SetIJKToRASMatrix(_ijk_to_ras(volume, spacing))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(quality_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    low, high = (0.0, 1.0) if on_dose else (scores.info.score.minimum, scores.info.score.maximum)
    threshold = lowest_adequate_value(scores.info.adequacy)
    if threshold is not None:
        low = max(low, 2 * threshold - high)  # the threshold sits mid-scale: red below, green above
    display.SetWindowLevelMinMax(low, high)
    display.SetInterpolate(False)
    return node


def _place_in_hierarchy(ct_node, nodes) -> None:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(ct_node.GetScene())
    ct_item = hierarchy.GetItemByDataNode(ct_node)
    if not ct_item:
        ct_item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), ct_node)
    parent = hierarchy.GetItemParent(ct_item)
    for node in nodes:
        item = hierarchy.GetItemByDataNode(node)
        if not item:
            hierarchy.CreateItem(parent, node)
        else:
            hierarchy.SetItemParent(item, parent)


def score_text_at(table_node, z_mm: float) -> str:
    """``"slice 12: score 0.912, dose 0.85 (good)"`` for the scored slice whose centre is nearest to ``z_mm``
    (the text a slice view's corner shows while the user scrolls; ``(inadequate, set by artefacts)`` where a
    learned model's view set the verdict, no score where there is none); empty when ``z_mm`` is more than
    one slice spacing away from every scored slice."""
    table = table_node.GetTable() if table_node is not None else None
    if table is None or table.GetNumberOfRows() == 0:
        return ""
    z = np.array([table.GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())])
    nearest = int(np.argmin(np.abs(z - z_mm)))
    spacing = float(np.min(np.abs(np.diff(np.sort(z))))) if len(z) > 1 else 1.0
    if abs(z[nearest] - z_mm) > max(spacing, 1e-3):
        return ""
    score = table.GetValue(nearest, 2).ToDouble()
    dose = table.GetValue(nearest, 5).ToDouble()
    verdict = table.GetValue(nearest, 6).ToString()
    index = table.GetValue(nearest, 0).ToInt()
    driver = table.GetColumnIndex("driver")  # -1 in a table saved before it was added
    if verdict and driver >= 0 and table.GetValue(nearest, driver).ToString() == DRIVER_ARTEFACTS:
        verdict += ", set by artefacts"
    return (f"slice {index}:" + (f" score {score:.3f}" if np.isfinite(score) else " no score")
            + (f", dose {dose:.2f}" if np.isfinite(dose) else "") + (f" ({verdict})" if verdict else ""))


def show_in_slice_views(scene, ct_node, quality_map=None, opacity: float = 0.35) -> None:
    """CT as background (W350/L40) and, if given, the quality map as foreground in every slice view."""
    if ct_node.GetDisplayNode() is None:
        ct_node.CreateDefaultDisplayNodes()
    display = ct_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(350.0, 40.0)
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").SetBackgroundVolumeID(ct_node.GetID())
    set_overlay(scene, quality_map, opacity)


def set_overlay(scene, quality_map=None, opacity: float = 0.35) -> None:
    """The quality map as every slice view's foreground at ``opacity`` (``None``: no foreground). The
    background and its window/level are left as the user set them."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetForegroundVolumeID(quality_map.GetID() if quality_map is not None else None)
        composite.SetForegroundOpacity(opacity if quality_map is not None else 0.0)


def selected_z(scene, table_node, series_ids, rows) -> Optional[float]:
    """The z (mm) of the first point picked on a plot series drawn from ``table_node`` (the DistilIQA results
    table), or ``None``. ``series_ids[n]`` is a clicked plot series node's ID and ``rows[n]`` the table rows
    picked on it, as a plot view's ``dataSelected`` signal gives them; other series are ignored."""
    table = table_node.GetTable() if table_node is not None else None
    if table is None:
        return None
    for series_id, picked in zip(series_ids, rows):
        series = scene.GetNodeByID(series_id)
        if series is None or not series.IsA("vtkMRMLPlotSeriesNode") or not picked:
            continue
        if series.GetTableNodeID() != table_node.GetID() or series.GetXColumnName() != "z_mm":
            continue
        row = int(picked[0])
        if 0 <= row < table.GetNumberOfRows():
            return float(table.GetValue(row, 1).ToDouble())
    return None


class SliceRenderer:
    """One headless slice view of a scene (Slicer's slice logic with an application logic): it composes the
    background CT and the foreground quality map exactly as a slice view in Slicer does."""

    def __init__(self, scene, size: int = 320) -> None:
        if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
            self._color_logic = slicer.vtkMRMLColorLogic()
            self._color_logic.SetMRMLScene(scene)
        self.scene = scene
        self._application_logic = slicer.vtkMRMLApplicationLogic()
        self._application_logic.SetMRMLScene(scene)
        self.slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        self.slice_node.SetLayoutName("DistilIQAOffscreen")
        self.slice_node.SetDimensions(size, size, 1)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(self._application_logic)
        self.logic.SetMRMLScene(scene)
        self.logic.SetSliceNode(self.slice_node)

    def render(self, ct_node, quality_map, orientation: str, offset_mm: float, path: Optional[str] = None,
               opacity: float = 0.35) -> np.ndarray:
        """The composed RGBA picture (rows top to bottom); also written to ``path`` as PNG if given."""
        from vtk.util.numpy_support import vtk_to_numpy

        show_in_slice_views(self.scene, ct_node, quality_map, opacity)
        self.slice_node.SetOrientation(orientation)
        self.logic.FitSliceToAll()
        self.logic.SetSliceOffset(offset_mm)
        output = self.logic.GetImageDataConnection()
        output.GetProducer().Update()
        if path is not None:
            writer = vtk.vtkPNGWriter()
            writer.SetInputConnection(output)
            writer.SetFileName(str(path))
            writer.Write()
        image = output.GetProducer().GetOutputDataObject(output.GetIndex())
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
        return pixels[::-1].copy()


#: Name of the table node that holds the exam table of the last DICOM database batch.
EXAM_TABLE_NAME = "DistilIQA exams"


def show_exam_table(scene, rows: Sequence[Dict], name: str = EXAM_TABLE_NAME):
    """The exam table (:data:`DistilIQALib.dose.exams.EXAM_COLUMNS`, one row per study) as a table node, replacing
    the one a previous batch left (found by name); numbers as double columns (empty: NaN), the rest as text. The
    CMS CT measure's columns are an open computation of its inputs, not the certified measure (the node says so in
    its ``about`` attribute)."""
    from ..dose.cms import NOT_CERTIFIED
    from ..dose.exams import EXAM_COLUMNS

    node = scene.GetFirstNodeByName(name)
    if node is None or not node.IsA("vtkMRMLTableNode"):
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    numeric = [column for column in EXAM_COLUMNS if column.endswith(("_mgy", "_mgycm", "_cm", "_hu"))]
    for column in EXAM_COLUMNS:
        array = vtk.vtkDoubleArray() if column in numeric else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfValues(len(rows))
        for n, row in enumerate(rows):
            value = row.get(column)
            if column in numeric:
                array.SetValue(n, np.nan if value is None else float(value))
            else:
                array.SetValue(n, "" if value is None else str(value))
        table.AddColumn(array)
    node.SetAndObserveTable(table)
    node.SetLocked(True)
    node.SetAttribute("DistilIQA.about", NOT_CERTIFIED)
    node.Modified()
    return node


def show_table_in_views(application_logic, table_node) -> None:
    """Show ``table_node`` in the table views, as Slicer shows a table: make it the selection node's active
    table, then let the application logic propagate the selection, which sets the table of every
    ``vtkMRMLTableViewNode`` whose ``DoPropagateTableSelection`` is on (the default).

    From Slicer's source (github Slicer/Slicer, v5.8.1 = 11eaf62e and main at 583e9b37):
    ``vtkMRMLSelectionNode::SetActiveTableID`` (Libs/MRML/Core/vtkMRMLSelectionNode.h:116 at v5.8.1, :118 on
    main; ``SetReferenceActiveTableID`` is its deprecated name), ``vtkMRMLApplicationLogic::GetSelectionNode``
    (Libs/MRML/Logic/vtkMRMLApplicationLogic.h:60) and ``PropagateTableSelection``
    (Libs/MRML/Logic/vtkMRMLApplicationLogic.cxx:481-501 at v5.8.1, :470-489 on main), the flag's default
    (Libs/MRML/Core/vtkMRMLTableViewNode.h:95, ``DoPropagateTableSelection{true}``). The layout must hold a table
    view for the table to be seen: Slicer's script repository switches to ``SlicerLayoutFourUpTableView`` first
    (Docs/developer_guide/script_repository/models.md:70-72), which the panel does."""
    selection = application_logic.GetSelectionNode()
    if selection is None:
        raise RuntimeError("the application logic has no selection node (it has no scene)")
    selection.SetActiveTableID(table_node.GetID())
    application_logic.PropagateTableSelection()
