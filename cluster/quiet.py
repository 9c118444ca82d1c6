"""A quiet terminal: Ray's own log lines go to the run directory, Evolve's lines to the terminal.

Three sources of Ray lines reach a terminal, and each goes elsewhere unless `--verbose`:

- worker and actor output (`(TrainController pid=...) ...`, Serve's replica warnings): Ray
  forwards it to the driver only with `log_to_driver=True`; the run starts Ray with False, and
  `<run dir>/ray-logs` links to the session's log directory where those files are.
- the driver's own C++ core worker (`core_worker.cc ... constructor arguments ...`) writes to
  file descriptor 2, and Ray's Python loggers in the driver hold the stream opened on it:
  fd 2 becomes `<run dir>/ray-driver.log` for the run.
- Evolve's warnings and a bug's traceback use `sys.stderr`, which is re-opened on the
  terminal's original stderr, so what needs the user still shows.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

DRIVER_LOG = "ray-driver.log"
LOGS_LINK = "ray-logs"


class RayLogs:
    def __init__(self, run_dir: Path, verbose: bool = False):
        self.run_dir, self.verbose = Path(run_dir), verbose
        self._saved_fd: int | None = None
        self._saved_stderr = None

    @property
    def log_to_driver(self) -> bool:
        return self.verbose

    def __enter__(self) -> "RayLogs":
        if self.verbose or not _is_fd2(sys.stderr):
            return self  # under a test's capture, or asked for everything: leave stderr alone
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        with open(self.run_dir / DRIVER_LOG, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 2)
        self._saved_stderr = sys.stderr
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(self._saved_fd), "wb", buffering=0),
                                      encoding=self._saved_stderr.encoding, errors="backslashreplace",
                                      line_buffering=True)
        return self

    def link_session_logs(self) -> Path | None:
        """`<run dir>/ray-logs` -> this node's Ray session log directory (worker and actor output)."""
        try:
            import ray._private.worker as worker  # no public API names the session's log directory

            target = Path(worker._global_node.get_logs_dir_path())
        except Exception:
            return None  # a ray:// client has no local session: its logs stay on the cluster
        link = self.run_dir / LOGS_LINK
        try:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target, target_is_directory=True)
        except OSError:
            return None
        return link

    def __exit__(self, *exc) -> None:
        if self._saved_fd is None:
            return
        terminal, sys.stderr = sys.stderr, self._saved_stderr
        terminal.flush()
        terminal.close()  # its own dup of the terminal's fd
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        self._saved_fd = None


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False
