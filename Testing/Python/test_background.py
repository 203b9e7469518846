"""Background jobs as the Slicer panel runs them: real child processes, real progress lines, real cancel."""
import os
import sys
import time

import pytest

from DistilIQALib.slicer_bridge.background import BackgroundProcess, engine_command, parse_progress


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
