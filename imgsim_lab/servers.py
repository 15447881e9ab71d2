"""Start and stop `imgsim-server` subprocesses (for benchmarks, the study and the soak)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


class ServerProcess:
    """An `imgsim-server` child on a free loopback port; a context manager."""

    def __init__(
        self, *flags: str, ready_timeout: float = 180.0, nofile: int | None = None
    ) -> None:
        """`nofile` runs the server under that open-file limit (as `ulimit -n` would)."""
        self.flags = flags
        self.ready_timeout = ready_timeout
        self.nofile = nofile
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.http_port = 0
        self.log_tail: list[str] = []

    def __enter__(self) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "imgsim_server",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            # The lab compares every model; a deployed server serves its allowlist only.
            *(() if "--models" in self.flags else ("--models", "all")),
            *self.flags,
        ]
        limit = self.nofile

        def lower_limit() -> None:
            if limit:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lower_limit if limit else None,
        )
        wants_http = "--http-port" in self.flags
        deadline = time.monotonic() + self.ready_timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on .*:(\d+)", line)
            if match:
                self.port = int(match.group(1))
            http = re.search(r"web page at https?://.*:(\d+)/", line)
            if http:
                self.http_port = int(http.group(1))
            if self.port and (self.http_port or not wants_http):
                # Keep draining the pipe so that server logging can never block on it.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.__exit__()
        raise RuntimeError("server did not start:\n" + "".join(lines))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.log_tail = [*self.log_tail[-50:], line]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the server process, in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
