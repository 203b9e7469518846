"""The repository itself: layout, CMake lists, Slicer-compatible syntax, engine boundaries, README vs CI."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SLICER_IMPORTS = {"slicer", "qt", "ctk", "vtk", "PythonQt", "mrml"}


def test_layout_the_user_asked_for():
    for name in ("DistilIQA", "DistilIQALib", "Resources", "Testing", "benchmarks", ".ci"):
        assert (ROOT / name).is_dir(), name
    for name in ("CMakeLists.txt", "DistilIQA.png", "README.md", "LICENSE", "pyproject.toml",
                 "DistilIQA/DistilIQA.py", "DistilIQA/CMakeLists.txt", "Resources/Icons/DistilIQA.png"):
        assert (ROOT / name).is_file(), name


def _cmake_listed(text: str, variable: str):
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, variable
    return [line.strip() for line in match.group(1).split() if line.strip()]


def test_every_shipped_file_is_listed_in_cmake():
    text = (ROOT / "CMakeLists.txt").read_text()
    scripts = _cmake_listed(text, "DISTILIQALIB_PYTHON_SCRIPTS")
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "DistilIQALib").rglob("*.py"))
    assert sorted(scripts) == on_disk
    resources = _cmake_listed(text, "DISTILIQA_RESOURCES")
    resource_files = sorted([str(p.relative_to(ROOT)) for p in (ROOT / "Resources").rglob("*")
                             if p.is_file() and p.name != ".gitkeep"]
                            + [str(p.relative_to(ROOT)) for p in (ROOT / "DistilIQALib").rglob("*.json")])
    assert sorted(resources) == resource_files
    module = _cmake_listed((ROOT / "DistilIQA" / "CMakeLists.txt").read_text(), "MODULE_PYTHON_SCRIPTS")
    assert module == ["${MODULE_NAME}.py"] and (ROOT / "DistilIQA" / "DistilIQA.py").is_file()


def _python_files():
    return sorted((ROOT / "DistilIQA").glob("*.py")) + sorted((ROOT / "DistilIQALib").rglob("*.py"))


def test_code_slicer_runs_is_python_39_syntax():
    for path in _python_files():
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_engine_has_no_slicer_or_qt_imports():
    for path in sorted((ROOT / "DistilIQALib").rglob("*.py")):
        if path == ROOT / "DistilIQALib" / "slicer_bridge" / "mrml.py":  # the one module allowed to touch MRML
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in SLICER_IMPORTS, f"{path.name} imports {name}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    main_command = next(c for c in commands if "DistilIQALib demo" in c)
    assert test_command.strip() in (ROOT / ".ci" / "run").read_text().splitlines()
    assert main_command.startswith("python3 -m venv .venv")
