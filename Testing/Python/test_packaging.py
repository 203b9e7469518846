"""Configure and install the extension with CMake against a stand-in for Slicer's CMake package that does
what the real macro does (copy the listed scripts and resources, keeping relative paths), then check the
installed tree is the one Slicer loads."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"

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
    subprocess.run([_cmake(), "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}"], check=True,
                   capture_output=True, timeout=300)
    subprocess.run([_cmake(), "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True,
                   timeout=300)
    installed = prefix / SCRIPTED
    assert (installed / "DistilIQA.py").is_file()
    assert not (installed / "DistilIQA" / "DistilIQA.py").exists()
    top_level_py = sorted(p.name for p in installed.glob("*.py"))
    assert top_level_py == ["DistilIQA.py"]  # Slicer takes every top-level .py for a module
    shipped = sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file())
    expected = sorted([str(p.relative_to(ROOT)) for p in (ROOT / "DistilIQALib").rglob("*.py")]
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


def test_extension_description_file_matches_cmake():
    description = json.loads((ROOT / "DistilIQA.json").read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert description["category"] in cmake and "PyTorch" in description["build_dependencies"]
    assert description["scm_url"].startswith("https://")
