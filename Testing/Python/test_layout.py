"""The engine's folders are the parts of the drawing in DESIGN.md (section 2), and imports between them run one way.

Every import of every engine module is read with ``ast`` (module-level and inside functions, relative and
absolute) and resolved to the part it reaches: a sub-package, one of the shared pieces at the top, or an entry
point. A new folder must be given its place in ``MAY_IMPORT`` before it can pass.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "DistilIQALib"
PACKAGE = "DistilIQALib"

#: Top-level modules that start the engine: they may import every part, and no part imports them.
ENTRY_POINTS = {"__init__", "__main__", "cli"}
#: Small top-level modules every part uses; they import only one another.
SHARED = {"errors", "progress", "volume"}
MAX_TOP_LEVEL_MODULES = 6
MIN_SUB_PACKAGES = 4
#: Sub-package -> the sub-packages its modules may import (every part may import the shared pieces).
MAY_IMPORT = {
    "quality": set(),
    "io": {"quality"},
    "dose": {"quality", "io"},
    "archive": {"quality", "io", "dose"},
    "training": {"quality", "io"},
    "slicer_bridge": {"quality", "io", "dose"},
}
ENTRY, SHARED_PART = "entry point", "shared"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_engine_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative / "__init__.py").is_file()


def engine_imports(module: str, source: str, is_package: bool = False):
    """``(line, imported engine module)`` for every import in ``source``, the text of engine module ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            # ``from X import name``: the module X.name where there is one (``from . import datasets``), else X
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield node.lineno, submodule if _is_engine_module(submodule) else target


def part_of(module: str) -> str:
    """The part of the drawing that engine module ``module`` belongs to."""
    names = module.split(".")
    if len(names) == 1 or names[1] in ENTRY_POINTS:
        return ENTRY
    if names[1] in SHARED:
        return SHARED_PART
    return names[1]


def direction_errors(module: str, source: str, is_package: bool = False):
    """Imports of ``module`` that run against ``MAY_IMPORT``, one readable line each."""
    source_part = part_of(module)
    if source_part == ENTRY:
        return []
    errors = []
    for line, imported in engine_imports(module, source, is_package):
        target_part = part_of(imported)
        if target_part == source_part:
            continue
        if target_part == ENTRY:
            allowed = False
        elif source_part == SHARED_PART:
            allowed = False  # the shared pieces sit below every part
        else:
            allowed = target_part == SHARED_PART or target_part in MAY_IMPORT.get(source_part, set())
        if not allowed:
            errors.append(f"{module}:{line} imports {imported}: {source_part} may not import {target_part}")
    return errors


def find_cycle(graph):
    """One cycle of ``graph`` (``node -> set of nodes``) as a list of nodes, or ``None``."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for following in sorted(graph.get(node, ())):
            if state.get(following) == "open":
                return path[path.index(following):] + [following]
            if following not in state:
                found = visit(following)
                if found:
                    return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _engine_files():
    return sorted(ENGINE.rglob("*.py"))


def _sub_packages():
    return sorted(path.name for path in ENGINE.iterdir() if path.is_dir() and (path / "__init__.py").is_file())


def test_few_modules_at_the_top_and_the_rest_in_sub_packages():
    top_level = {path.stem for path in ENGINE.glob("*.py")}
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, sorted(top_level)
    assert top_level == ENTRY_POINTS | SHARED
    assert len(_sub_packages()) >= MIN_SUB_PACKAGES
    assert set(_sub_packages()) == set(MAY_IMPORT), "give every sub-package its place in MAY_IMPORT"
    folders = {path.parent for path in _engine_files()}
    assert all((folder / "__init__.py").is_file() for folder in folders), "a folder of modules without __init__.py"
    # a sub-package named after a top-level package it imports would hide that package
    assert not set(_sub_packages()) & {"slicer", "torch", "numpy", "pydicom", "SimpleITK"}


def test_imports_run_one_way_between_parts():
    errors = [error for path in _engine_files()
              for error in direction_errors(_module_name(path), path.read_text(), path.name == "__init__.py")]
    assert errors == []


def test_no_cycle_between_parts():
    assert find_cycle(MAY_IMPORT) is None  # the rule itself allows no loop
    graph = {}
    for path in _engine_files():
        module = _module_name(path)
        for _line, imported in engine_imports(module, path.read_text(), path.name == "__init__.py"):
            source_part, target_part = part_of(module), part_of(imported)
            if ENTRY not in (source_part, target_part) and source_part != target_part:
                graph.setdefault(source_part, set()).add(target_part)
    assert find_cycle(graph) is None
    assert graph.get("quality", set()) <= {SHARED_PART}  # quality judges images with nothing above it


def test_every_import_resolves_to_an_engine_module():
    """The checker sees real modules: a typo in its resolution would let everything pass."""
    seen = 0
    for path in _engine_files():
        for _line, imported in engine_imports(_module_name(path), path.read_text(), path.name == "__init__.py"):
            assert _is_engine_module(imported), f"{path}: {imported}"
            seen += 1
    assert seen > 100


def test_the_check_catches_a_wrong_way_import_and_a_loop():
    lazy_upward = "def f():\n    from ..archive.store import ResultStore\n"
    assert direction_errors("DistilIQALib.quality.scoring", lazy_upward) == [
        "DistilIQALib.quality.scoring:2 imports DistilIQALib.archive.store: quality may not import archive"]
    sideways = "import DistilIQALib.slicer_bridge.mrml\nfrom .. import cli\n"
    assert len(direction_errors("DistilIQALib.training.recipe", sideways)) == 2
    from_package = "from ..training import datasets\n"
    assert direction_errors("DistilIQALib.io.reading", from_package) == [
        "DistilIQALib.io.reading:1 imports DistilIQALib.training.datasets: io may not import training"]
    assert direction_errors("DistilIQALib.errors", "from .quality import model\n")
    assert direction_errors("DistilIQALib.io.outputs", "from ..quality.scoring import SliceScores\n") == []
    assert direction_errors("DistilIQALib.cli", "from .training import datasets\n") == []
    assert find_cycle({"io": {"quality"}, "quality": {"shared", "io"}}) == ["io", "quality", "io"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_development_page_maps_every_sub_package():
    page = (ROOT / "docs" / "development.md").read_text()
    repository = page[page.index("## Repository"):]
    for name in _sub_packages():
        assert re.search(rf"^  {name}/ ", repository, re.M), name


def test_names_the_documentation_shows_import_from_the_package():
    """The documentation's ``from DistilIQALib import ...`` (the Python API on the command-line page, ``scan_folder``
    on the batch page) and the engine functions it names survive the move to sub-packages: they are re-exported at
    the top."""
    import DistilIQALib

    pages = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    shown = {name.strip(" `)") for names in re.findall(r"from DistilIQALib import ([\w, ]+)", pages)
             for name in names.split(",")}
    assert {"Progress", "Scorer", "read_volume", "scan_folder"} <= shown
    assert shown <= set(DistilIQALib.__all__)
    for name in DistilIQALib.__all__:
        assert callable(getattr(DistilIQALib, name)), name
