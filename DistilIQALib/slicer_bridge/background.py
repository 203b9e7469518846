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
from typing import Dict, List, Optional, Sequence, Tuple

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


class BackgroundProcess:
    def __init__(self, command: Sequence[str], cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None):
        self.command = list(command)
        self._lines: queue.Queue[str] = queue.Queue()
        environment = {**os.environ, **(env or {}), "DISTILIQA_PROGRESS_LINES": "1", "PYTHONUNBUFFERED": "1"}
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group: cancel reaches grandchildren
        self.process = subprocess.Popen(self.command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, **options)
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
        if os.name == "nt":
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], capture_output=True)
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
