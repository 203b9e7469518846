"""Configure and install the extension with CMake against a stand-in for Slicer's CMake package that does
what the real macro does (copy the listed scripts and resources, keeping relative paths), then check the
installed tree is the one Slicer loads."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"
MODULE = ROOT / "DistilIQA" / "DistilIQA.py"

SLICER_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
"""
USE_SLICER = """
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "@SCRIPTED@")
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(_MODULE "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(_file ${_MODULE_SCRIPTS} ${_MODULE_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_file})
      message(FATAL_ERROR "listed file missing: ${_file}")
    endif()
    get_filename_component(_folder ${_file} DIRECTORY)
    install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/${_file}
            DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_folder})
  endforeach()
endmacro()
# Records what slicer_add_python_unittest (CMake/SlicerMacroPythonTesting.cmake:75-93 in Slicer 5.8.1) would
# register: the script, resolved against the calling folder, run inside Slicer as test py_<script name>.
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/python_unittests.txt "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}\n")
endmacro()
""".replace("@SCRIPTED@", SCRIPTED)


def _cmake():
    local = Path(sys.executable).with_name("cmake")
    return str(local) if local.is_file() else shutil.which("cmake")


@pytest.mark.skipif(_cmake() is None, reason="cmake is not installed")
def test_installed_tree_is_what_slicer_loads(tmp_path):
    fake = tmp_path / "Slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(SLICER_CONFIG)
    (fake / "UseSlicer.cmake").write_text(USE_SLICER)
    (fake / "Nothing.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    subprocess.run([_cmake(), "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}", "-DBUILD_TESTING=ON"],
                   check=True, capture_output=True, timeout=300)
    subprocess.run([_cmake(), "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True,
                   timeout=300)
    installed = prefix / SCRIPTED
    assert (installed / "DistilIQA.py").is_file()
    assert not (installed / "DistilIQA" / "DistilIQA.py").exists()
    top_level_py = sorted(p.name for p in installed.glob("*.py"))
    assert top_level_py == ["DistilIQA.py"]  # Slicer takes every top-level .py for a module
    shipped = sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file())
    expected = sorted([str(p.relative_to(ROOT)) for p in (ROOT / "DistilIQALib").rglob("*.py")]
                      + [str(p.relative_to(ROOT)) for p in (ROOT / "DistilIQALib").rglob("*.json")]
                      + [str(p.relative_to(ROOT)) for p in (ROOT / "Resources").rglob("*")
                         if p.is_file() and p.name != ".gitkeep"]
                      + ["DistilIQA.py"])
    assert shipped == expected
    probe = ("import sys, json; sys.path.insert(0, sys.argv[1]); import DistilIQALib; "
             "print(json.dumps(DistilIQALib.__file__))")
    result = subprocess.run([sys.executable, "-c", probe, str(installed)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout).startswith(str(installed))
    # the module's resources as the installed module finds them
    for name in ("UI/DistilIQA.ui", "Icons/DistilIQA.png", "Models/distiliqa_student.safetensors"):
        assert Path(_resource_path_for(installed / "DistilIQA.py", name)).is_file(), name
    # the self-test registered as a CTest test, as Slicer's module template does
    registered = (build / "python_unittests.txt").read_text().split()
    assert registered == [str(ROOT / "DistilIQA" / "DistilIQA.py")]


def test_extension_description_file_matches_cmake():
    description = json.loads((ROOT / "DistilIQA.json").read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert description["category"] in cmake and "PyTorch" in description["build_dependencies"]
    assert description["scm_url"].startswith("https://")


def _module_functions(module_file):
    """``_extensionRoot`` and ``_resourcePath`` of DistilIQA.py, run as if the file sat at ``module_file`` (the
    rest of the module needs Slicer's Qt)."""
    tree = ast.parse(MODULE.read_text())
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef)
              and node.name in ("_extensionRoot", "_resourcePath")]
    namespace = {"os": os, "__file__": str(module_file)}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(MODULE), "exec"), namespace)
    return namespace


def _resource_path_for(module_file, name):
    return _module_functions(module_file)["_resourcePath"](name)


def test_resources_resolve_from_the_source_tree():
    """Slicer's own resourcePath is <folder of the module file>/Resources (ScriptedLoadableModule.py:53-56 and
    :112-115, Slicer 5.8.1), which does not exist in the source tree: the module and widget use their own."""
    assert not (ROOT / "DistilIQA" / "Resources").exists()
    for name in ("UI/DistilIQA.ui", "Icons/DistilIQA.png"):
        assert Path(_resource_path_for(MODULE, name)) == ROOT / "Resources" / name
        assert (ROOT / "Resources" / name).is_file()
    tree = ast.parse(MODULE.read_text())
    overriding = {node.name for node in tree.body if isinstance(node, ast.ClassDef)
                  for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "resourcePath"
                  and "_resourcePath(filename)" in ast.unparse(item)}
    assert overriding == {"DistilIQA", "DistilIQAWidget"}


def test_self_test_is_registered_as_the_module_template_does():
    """Slicer's template (Utilities/Templates/Modules/Scripted/CMakeLists.txt) registers the module file's
    unittest with slicer_add_python_unittest(SCRIPT <module>.py) under BUILD_TESTING; slicer.testing.runUnitTest
    then runs the <Module>Test class, the one ScriptedLoadableModule.runTest also looks for
    (ScriptedLoadableModule.py:76 in 5.8.1)."""
    cmake = (ROOT / "DistilIQA" / "CMakeLists.txt").read_text()
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", cmake)
    assert "class DistilIQATest(ScriptedLoadableModuleTest)" in MODULE.read_text()


#: The Extensions Index's accepted categories (Slicer/ExtensionsIndex, scripts/check_description_files.py:802,
#: ACCEPTED_EXTENSION_CATEGORIES, checked by check_category at :169-172).
ACCEPTED_EXTENSION_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda", "Converters",
    "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation", "Filtering",
    "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote",
    "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression", "Shape Visualization",
    "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound", "Utilities",
    "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
}


def _cmake_setting(name):
    match = re.search(rf'set\(\s*{name}\s+"([^"]*)"\s*\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, name
    return match.group(1)


def test_category_is_one_the_extensions_index_accepts():
    description = json.loads((ROOT / "DistilIQA.json").read_text())
    assert description["category"] in ACCEPTED_EXTENSION_CATEGORIES
    assert _cmake_setting("EXTENSION_CATEGORY") == description["category"]


def test_every_picture_url_is_a_picture_in_this_repository():
    """The Index fetches EXTENSION_ICONURL and each EXTENSION_SCREENSHOTURLS entry and wants an image
    (check_description_files.py:419-449, validate_image_url :274); here each URL must name a PNG of this
    repository on its main branch, so it resolves once the branch is pushed."""
    scm = json.loads((ROOT / "DistilIQA.json").read_text())["scm_url"]
    owner_repo = re.match(r"https://github.com/([^/]+/[^/.]+)(\.git)?$", scm).group(1)
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    urls = [_cmake_setting("EXTENSION_ICONURL")] + _cmake_setting("EXTENSION_SCREENSHOTURLS").split()
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(prefix), url
        path = ROOT / url[len(prefix):]
        assert path.is_file(), url
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


def test_the_wheel_ships_the_default_exam_category_mapping(tmp_path):
    """The default mapping file is package data: a pip install (a wheel) carries it beside the module that reads
    it, as the CMake list carries it into Slicer (the test above)."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        mapping = json.loads(archive.read("DistilIQALib/dose/exam_categories.json"))
    assert mapping["text_rules"] and mapping["area_from_regions"]["rules"]
