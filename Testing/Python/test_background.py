"""Background jobs as the Slicer panel runs them: real child processes, real progress lines, real cancel."""
import os
import sys
import time

import pytest

from DistilIQALib.slicer_bridge.background import (
    BackgroundProcess,
    child_environment,
    engine_command,
    kill_tree_command,
    parse_progress,
    popen_options,
)


def _wait(job, timeout=60):
    lines, records = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new_lines, new_records, code = job.poll()
        lines += new_lines
        records += new_records
        if code is not None:
            return lines, records, code
        time.sleep(0.02)
    raise AssertionError("job did not finish")


def test_progress_lines_and_log_are_separated():
    script = ("import json, sys\n"
              "for n in range(3):\n"
              "    print('DISTILIQA-PROGRESS ' + json.dumps({'task': 't', 'epoch': n + 1, 'epochs': 3}))\n"
              "    print('epoch', n + 1, 'done')\n"
              "sys.exit(0)\n")
    lines, records, code = _wait(BackgroundProcess([sys.executable, "-c", script]))
    assert code == 0
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert lines == ["epoch 1 done", "epoch 2 done", "epoch 3 done"]
    assert parse_progress("DISTILIQA-PROGRESS not json") is None and parse_progress("plain") is None


def test_engine_errors_come_back_as_one_line_and_exit_code(tmp_path):
    lines, _, code = _wait(BackgroundProcess(engine_command(["score", str(tmp_path / "missing")])))
    assert code == 2 and lines == [f"distiliqa: error: no such file or folder: {tmp_path / 'missing'}"]


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_cancel_stops_the_whole_process_tree(tmp_path):
    marker = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
              f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(120)\n")
    job = BackgroundProcess([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(marker.read_text())
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 15 and not job.running
    for _ in range(100):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild process survived cancel")


def test_windows_child_is_started_as_slicer_starts_pythonslicer():
    """Slicer hides the console window of PythonSlicer.exe with a STARTUPINFO of dwFlags 1 (STARTF_USESHOWWINDOW)
    and wShowWindow 0 (SW_HIDE) (Base/Python/slicer/util.py:3819-3824, Slicer 5.8.1); the child keeps its own
    process group for taskkill /T. Checked here by what the code would pass to Popen on Windows."""
    options = popen_options("nt")
    assert options["creationflags"] == 0x00000200  # CREATE_NEW_PROCESS_GROUP
    info = options["startupinfo"]
    assert (info.dwFlags, info.wShowWindow) == (1, 0)
    assert "start_new_session" not in options
    for platform in ("nt", "posix"):
        assert (popen_options(platform)["encoding"], popen_options(platform)["errors"]) == ("utf-8", "replace")
    posix = popen_options("posix")
    assert posix["start_new_session"] is True and "startupinfo" not in posix and "creationflags" not in posix


def test_taskkill_opens_no_console_window():
    command, options = kill_tree_command(4321, "nt")
    assert command == ["taskkill", "/T", "/F", "/PID", "4321"]
    assert options["creationflags"] == 0x08000000 and options["capture_output"] is True  # CREATE_NO_WINDOW
    assert kill_tree_command(4321, "posix") is None


def test_undecodable_output_neither_stops_the_reader_nor_hangs_the_job():
    """One byte that is not UTF-8 (a path in a Windows code page, say) used to end the reader thread: the job
    then never ended for the panel. It becomes U+FFFD and the lines after it, progress included, still arrive."""
    script = ("import sys\n"
              "out = sys.stdout.buffer\n"
              "out.write(b'caf\\xe9 \\xff\\xfe\\n')\n"
              "out.write(b'DISTILIQA-PROGRESS {\"done\": 1, \"total\": 2}\\n')\n"
              "out.write('na\\u00efve \\u00e9t\\u00e9\\n'.encode('utf-8'))\n"
              "out.flush()\n")
    lines, records, code = _wait(BackgroundProcess([sys.executable, "-c", script]))
    assert code == 0
    assert lines == ["caf\ufffd \ufffd\ufffd", "naïve été"]
    assert records == [{"done": 1, "total": 2}]


def test_child_writes_utf8_whatever_the_code_page():
    environment = child_environment({"A": "1"}, base={"PATH": "/bin", "PYTHONIOENCODING": "cp1252"})
    assert environment["PYTHONIOENCODING"] == "utf-8" and environment["A"] == "1" and environment["PATH"] == "/bin"
    lines, _, code = _wait(BackgroundProcess([sys.executable, "-c", "print('\\u00e9\\u4e2d')"],
                                             env={"PYTHONIOENCODING": "ascii"}))
    assert code == 0 and lines == ["é中"]
