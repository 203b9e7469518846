"""The Qt panel checked statically: the .ui file against the module code and the parameter node."""
import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UI_FILE = ROOT / "Resources" / "UI" / "DistilIQA.ui"
MODULE = ROOT / "DistilIQA" / "DistilIQA.py"
#: Widget classes the panel may use: Qt widgets, and CTK / qMRML widgets that ship with Slicer.
AVAILABLE_CLASSES = {
    "QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QProgressBar",
    "QTableWidget", "QPlainTextEdit", "QLineEdit", "QGroupBox", "QTabWidget",
    "ctkCollapsibleButton", "ctkPathLineEdit", "ctkSliderWidget", "ctkDoubleSpinBox",
    "qMRMLWidget", "qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView",
}


def _widgets():
    tree = ElementTree.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def _parameter_fields():
    module = ast.parse(MODULE.read_text())
    for node in ast.walk(module):
        if isinstance(node, ast.ClassDef) and node.name == "DistilIQAParameterNode":
            return {statement.target.id for statement in node.body if isinstance(statement, ast.AnnAssign)}
    raise AssertionError("no DistilIQAParameterNode in the module")


def test_every_widget_the_code_uses_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    missing = used - set(_widgets())
    assert not missing, missing
    assert {"applyButton", "progressBar", "batchButton", "trainingLog"} <= used and "inputVolumeSelector" in _widgets()


def test_every_binding_names_a_parameter_and_every_parameter_is_bound():
    bindings = {}
    for name, widget in _widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[name] = prop.find("string").text
    fields = _parameter_fields()
    assert set(bindings.values()) <= fields, set(bindings.values()) - fields
    assert fields <= set(bindings.values()), fields - set(bindings.values())


def test_only_classes_that_slicer_has():
    classes = {widget.get("class") for widget in _widgets().values()}
    assert classes <= AVAILABLE_CLASSES, classes - AVAILABLE_CLASSES
    declared = {c.find("class").text for c in ElementTree.parse(UI_FILE).iter("customwidget")}
    custom = {c for c in classes if not c.startswith("Q")}
    assert custom <= declared


def test_widget_names_are_unique_and_the_scene_reaches_the_selector():
    names = [w.get("name") for w in ElementTree.parse(UI_FILE).iter("widget")]
    assert len(names) == len(set(names))
    connections = [(c.find("sender").text, c.find("receiver").text, c.find("slot").text)
                   for c in ElementTree.parse(UI_FILE).iter("connection")]
    assert ("DistilIQA", "inputVolumeSelector", "setMRMLScene(vtkMRMLScene*)") in connections


# --- the bindings as Slicer's parameterNodeWrapper GUI connectors make them -------------------------------------
# Facts from Base/Python/slicer/parameterNodeWrapper/guiConnectors.py (Slicer v5.8.1; main alike):
# * QComboBox + str/int/float/bool field: the Choice annotation is required (raises otherwise, :368), and the
#   connector replaces the combo box's items with the choices (:377).
# * ctkPathLineEdit binds only to pathlib types (:605-611); a str field finds no connector and connectGui raises.
# * QSpinBox + int and QDoubleSpinBox + float: without WithinRange/Minimum/Maximum the connector sets the range
#   to -2**31..2**31-1 (:260-270) or -inf..inf (:325-336), overwriting the .ui's range.
# * QCheckBox + bool (:156-159); qMRMLNodeComboBox + a node class (:677-680); QLineEdit + str
#   (QLineEditToStrConnector).


def _annotation(node):
    """A field's annotation as ``(base type name, {validator name: literal arguments})``."""
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("Annotated", "typing.Annotated"):
        base, *extras = node.slice.elts
        validators = {}
        for extra in extras:
            assert isinstance(extra, ast.Call), ast.unparse(extra)
            validators[ast.unparse(extra.func)] = [ast.literal_eval(argument) for argument in extra.args]
        return ast.unparse(base), validators
    return ast.unparse(node), {}


def _parameter_annotations():
    module = ast.parse(MODULE.read_text())
    for node in ast.walk(module):
        if isinstance(node, ast.ClassDef) and node.name == "DistilIQAParameterNode":
            return {s.target.id: _annotation(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no DistilIQAParameterNode in the module")


def _property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            value = prop[0]
            return value.text if value.tag != "stringlist" else [s.text for s in value]
    return None


def _bound_widgets():
    return {_property(w, "SlicerParameterName"): w for w in _widgets().values()
            if _property(w, "SlicerParameterName")}


def _range(widget, cast):
    return cast(_property(widget, "minimum")), cast(_property(widget, "maximum"))


def test_every_binding_has_the_annotation_its_slicer_connector_needs():
    annotations = _parameter_annotations()
    problems = []
    for field, widget in _bound_widgets().items():
        kind, validators = annotations[field]
        cls = widget.get("class")
        if cls == "QComboBox":
            items = [item.find("property/string").text for item in widget.findall("item")]
            if kind != "str" or validators.get("Choice") != [items]:
                problems.append(f"{field}: QComboBox needs Annotated[str, Choice({items})], has {kind} {validators}")
        elif cls == "ctkPathLineEdit":
            if kind not in ("pathlib.Path", "Path"):
                problems.append(f"{field}: ctkPathLineEdit binds only to pathlib.Path, has {kind}")
        elif cls in ("QSpinBox", "QDoubleSpinBox"):
            cast, expected_kind = (int, "int") if cls == "QSpinBox" else (float, "float")
            expected = list(_range(widget, cast))
            if kind != expected_kind or validators.get("WithinRange") != expected:
                problems.append(f"{field}: {cls} needs Annotated[{expected_kind}, WithinRange{tuple(expected)}], "
                                f"has {kind} {validators}")
        elif cls == "QCheckBox":
            if kind != "bool":
                problems.append(f"{field}: QCheckBox needs bool, has {kind}")
        elif cls == "QLineEdit":  # QLineEditToStrConnector (guiConnectors.py, Slicer v5.8.1)
            if kind != "str":
                problems.append(f"{field}: QLineEdit needs str, has {kind}")
        elif cls == "qMRMLNodeComboBox":
            if kind.split(".")[-1] not in _property(widget, "nodeTypes"):
                problems.append(f"{field}: node combo box of {_property(widget, 'nodeTypes')}, field {kind}")
        else:
            problems.append(f"{field}: no connector binds a {cls}")
    assert not problems, "\n".join(problems)


def test_defaults_lie_within_the_bound_widgets_choices_and_ranges():
    module = ast.parse(MODULE.read_text())
    defaults = {}
    for node in ast.walk(module):
        if isinstance(node, ast.ClassDef) and node.name == "DistilIQAParameterNode":
            defaults = {s.target.id: ast.literal_eval(s.value) for s in node.body
                        if isinstance(s, ast.AnnAssign) and s.value is not None}
    annotations = _parameter_annotations()
    for field, (_kind, validators) in annotations.items():
        if field in defaults and "Choice" in validators:
            assert defaults[field] in validators["Choice"][0], field
        if field in defaults and "WithinRange" in validators:
            low, high = validators["WithinRange"]
            assert low <= defaults[field] <= high, field
    widgets = _bound_widgets()
    assert float(_property(widgets["overlayOpacity"], "value")) == defaults["overlayOpacity"]


def _method_source(class_name, method_name):
    module = ast.parse(MODULE.read_text())
    for node in ast.walk(module):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method_name:
                    return item
    raise AssertionError(f"no {class_name}.{method_name}")


def test_gui_tag_is_compared_with_none_never_by_truth():
    """connectGui returns None on Slicer 5.4-5.8 (wrapper.py:241-253 in v5.8.1 has no return), so the panel binds
    with connectParametersToGui, which returns its tag on every release (wrapper.py:194-213 in v5.8.1, :186-205
    in v5.4.0); the first tag is 0: a truth test never disconnects. The old binding is undone before a new one."""
    text = MODULE.read_text()
    assert not re.search(r"and self\._parameterNodeGuiTag\b(?! is)", text)
    assert not re.search(r"if self\._parameterNodeGuiTag\s*:", text)
    setter = ast.unparse(_method_source("DistilIQAWidget", "setParameterNode"))
    # binding the node the panel already holds is skipped: no second set of connectors and observers
    assert "parameterNode.parameterNode is self._parameterNode.parameterNode" in setter
    assert setter.index("return") < setter.index("self._disconnectGui()") < setter.index(".connectParametersToGui(")
    assert ".connectGui(" not in text
    assert "self._disconnectGui()" in ast.unparse(_method_source("DistilIQAWidget", "cleanup"))


def test_score_text_goes_to_the_overlay_corner_that_dataprobe_leaves_alone():
    """DataProbe's SliceViewAnnotations rewrites cornerAnnotation() on each slice change (SliceViewAnnotations.py
    :384, :665 in v5.8.1); qMRMLSliceWidget.h:124 offers overlayCornerAnnotation(); DataProbe renders with
    scheduleRender() (:404)."""
    text = ast.unparse(_method_source("DistilIQAWidget", "onSliceMoved"))
    assert ".overlayCornerAnnotation()" in text and ".cornerAnnotation()" not in text
    assert "scheduleRender()" in text and "forceRender" not in MODULE.read_text()


def test_overlay_follows_the_parameter_node_not_the_widget_signals():
    """A widget's own signal can reach the panel before the binding has written the parameter node, so the panel
    must not read the node from those signals; it observes the node's ModifiedEvent instead."""
    text = MODULE.read_text()
    assert 'overlayOpacitySpinBox.connect("valueChanged' not in text
    assert 'showOverlayCheckBox.connect("toggled' not in text
    setter = ast.unparse(_method_source("DistilIQAWidget", "setParameterNode"))
    assert "vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified" in setter


def test_no_model_runs_in_a_thread_of_the_slicer_process():
    """Slicer's Python keeps the GIL while the Qt event loop idles, so scoring, like every long job, runs in a
    child process; the module file neither starts threads nor runs the model."""
    tree = ast.parse(MODULE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"threading", "concurrent.futures", "Scorer", "load_weights", "torch"}, imported
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} | {
        node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"Thread", "score_volume", "Scorer", "ThreadPoolExecutor"}
    start = ast.unparse(_method_source("DistilIQALogic", "startScoring"))
    assert "write_volume_file" in start and "ScoreJob" in start


def test_small_fixes_of_the_panel():
    batch = ast.unparse(_method_source("DistilIQAWidget", "onBatchButton"))
    assert batch.index("tryWithErrorDisplay") < batch.index("batchArguments")  # a closed database: one message
    close = ast.unparse(_method_source("DistilIQAWidget", "onSceneStartClose"))
    assert "cancelEverything" not in close and "_cancelScoring" in close  # batch/training outlive the scene
    assert "self._lastResults = None" in close
    plot = ast.unparse(_method_source("DistilIQAWidget", "onPlotDataSelected"))
    assert "seriesIds.GetValue" in plot and "selected_z" in plot
    assert "self._timer.stop()" in ast.unparse(_method_source("DistilIQAWidget", "cleanup"))
    assert "set_overlay" in ast.unparse(_method_source("DistilIQALogic", "setOverlay"))  # keeps window/level


def test_adapt_to_this_site_is_wired():
    assert "adaptButton" in _widgets()
    text = ast.unparse(_method_source("DistilIQAWidget", "onAdaptButton"))
    assert "adaptArguments" in text and "_startJob" in text and "_offerModel" in text and "'recipe'" in text
