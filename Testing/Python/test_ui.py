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
