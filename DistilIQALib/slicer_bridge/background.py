"""Long jobs in a child process (training, archive batches), read without blocking a GUI.

A reader thread collects the child's output lines; the GUI polls :meth:`BackgroundProcess.poll`
from a timer, so the panel stays responsive. ``DISTILIQA-PROGRESS`` lines become progress
records. :meth:`cancel` stops the whole process tree (the child and anything it started,
e.g. ``torchrun`` workers). No Qt here: Slicer's widget drives it with a ``QTimer``.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..progress import PROGRESS_PREFIX


def engine_command(arguments: Sequence[str], python: Optional[str] = None) -> List[str]:
    """``python -m DistilIQALib ...`` with the interpreter given (Slicer: ``PythonSlicer``) or this one."""
    return [python or sys.executable, "-m", "DistilIQALib", *arguments]


def parse_progress(line: str) -> Optional[Dict]:
    """The record of a ``DISTILIQA-PROGRESS {...}`` line, else ``None``."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        record = json.loads(line[len(PROGRESS_PREFIX):])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


# Windows' values (winbase.h, winuser.h), spelled out so that the options can be built and tested anywhere.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def popen_options(platform: str = os.name, startupinfo: Optional[Callable[..., Any]] = None) -> Dict[str, Any]:
    """The ``subprocess.Popen`` keyword arguments of a job's child on ``platform`` (``os.name``).

    POSIX: its own session, so that cancel reaches its whole process group. Windows: its own process group (for
    ``taskkill /T``), and started as Slicer starts ``PythonSlicer``, a console program, in
    ``slicer.util.launchConsoleProcess`` (Base/Python/slicer/util.py:3819-3824 in Slicer 5.8.1): a ``STARTUPINFO``
    with ``dwFlags`` 1 (``STARTF_USESHOWWINDOW``) and ``wShowWindow`` 0 (``SW_HIDE``), so its console window is
    hidden, cannot be closed by hand (which would kill the job) and is shared by what the child starts. Output is
    text decoded as UTF-8 (the child is told to write UTF-8) with undecodable bytes replaced: where Slicer's own
    reader catches ``UnicodeDecodeError`` (util.py:3853-3858), a reader thread that stopped would leave the job
    hanging. ``startupinfo`` builds the ``STARTUPINFO`` (default: ``subprocess.STARTUPINFO`` where there is one)."""
    options: Dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True,
                               "encoding": "utf-8", "errors": "replace", "bufsize": 1}
    if platform == "nt":
        factory = startupinfo or getattr(subprocess, "STARTUPINFO", types.SimpleNamespace)
        options["creationflags"] = CREATE_NEW_PROCESS_GROUP
        options["startupinfo"] = factory(dwFlags=STARTF_USESHOWWINDOW, wShowWindow=SW_HIDE)
    else:
        options["start_new_session"] = True
    return options


def child_environment(env: Optional[Dict[str, str]] = None, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a job's child: ``base`` (default ``os.environ``) with ``env`` on top, unbuffered progress
    lines, and UTF-8 output whatever the system's code page."""
    return {**(os.environ if base is None else base), **(env or {}), "DISTILIQA_PROGRESS_LINES": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}


def kill_tree_command(pid: int, platform: str = os.name) -> Optional[Tuple[List[str], Dict[str, Any]]]:
    """Windows: ``taskkill`` of the process tree of ``pid`` and its ``subprocess.run`` options, started with no
    console window (``CREATE_NO_WINDOW``) so that no window flashes over Slicer. ``None`` on POSIX (signals)."""
    if platform != "nt":
        return None
    return (["taskkill", "/T", "/F", "/PID", str(pid)],
            {"capture_output": True, "creationflags": CREATE_NO_WINDOW})


class BackgroundProcess:
    def __init__(self, command: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None):
        self.command = list(command)
        self._lines: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(self.command, cwd=cwd, env=child_environment(env), **popen_options())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self.process.stdout.close()

    def poll(self) -> Tuple[List[str], List[Dict], Optional[int]]:
        """New log lines, new progress records, and the exit code once the process has ended and all its
        output was read (``None`` while running)."""
        lines, progress = [], []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            record = parse_progress(line)
            if record is None:
                lines.append(line)
            else:
                progress.append(record)
        code = self.process.poll()
        if code is not None and (self._reader.is_alive() or not self._lines.empty()):
            code = None  # output still arriving
        return lines, progress, code

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def cancel(self, timeout_s: float = 10.0) -> None:
        """Stop the child and its descendants (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process.poll() is not None:
            return
        windows = kill_tree_command(self.process.pid)
        if windows is not None:
            command, options = windows
            subprocess.run(command, **options)
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
