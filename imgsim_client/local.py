"""A private local server when none is named, as Dask's `Client()` starts a `LocalCluster`.

    with imgsim_client.local_server() as client:   # an ImgsimClient of a private server
        client.compare(a, b)

`local_server()` runs `imgsim-server` (the `[server]` extra of this same environment) as a child
process on a unix socket in a private temporary folder: no TCP port, no web page. It waits until
the server is ready, and stops it when the block ends: on success, on error, on Ctrl-C; and if
this process is killed, the server stops by itself (`--exit-with-stdin`: this process holds the
other end of its standard input, which the kernel closes whatever way this process ends). It is
the same server and code path as any other: this module imports nothing of the server, it runs
its command.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from imgsim_client._channel import ImgsimError
from imgsim_client.client import ClientConfig, ImgsimClient

SERVER_INSTALL = 'python -m pip install "imgsim[server]"'
STOP_S = 15.0  # a graceful stop's longest wait before the child is killed
LISTEN_S = 60.0  # the longest wait for the child to listen (it imports its runtime first)


def server_installed() -> bool:
    """Whether this environment can run `imgsim-server` (the [server] extra), without
    importing it."""
    return all(importlib.util.find_spec(m) is not None for m in ("imgsim_server", "onnxruntime"))


def answers(target: str, timeout: float = 0.5) -> bool:
    """Whether anything accepts a TCP connection at a HOST:PORT target (a quick probe before
    starting a local server; other targets are taken as answering)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or host.startswith(("unix", "ipv4", "ipv6", "dns")):
        return True
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class LocalServer:
    """One private `imgsim-server` child process (see the module's docstring)."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        if not server_installed():
            raise ImgsimError(
                grpc.StatusCode.UNAVAILABLE,
                "no imgsim server was named and none can be started here: imgsim-server is "
                "not installed in this environment. Either start a server (imgsim-server "
                f"--port 50051) and pass --server HOST:PORT, or {SERVER_INSTALL}",
            )
        self.folder = Path(tempfile.mkdtemp(prefix="imgsim-local-"))
        self.socket = self.folder / "imgsim.sock"
        self.log = self.folder / "server.log"
        cmd = [
            sys.executable, "-m", "imgsim_server", "--unix-socket", str(self.socket),
            "--exit-with-stdin", "--models", "all", "--grace", "2", "--log-level", "WARNING",
            *extra_args,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,  # its watchdog: closed when this process ends
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches this process, which stops it
            )

    @property
    def target(self) -> str:
        return f"unix:{self.socket}"

    def wait_listening(self, timeout: float = LISTEN_S) -> None:
        """Until its socket exists; ImgsimError with its log when it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.log.read_text(errors="replace").strip()[-2000:]
                self.stop()
                raise ImgsimError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the local imgsim-server did not start: {output or 'no output'}",
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after STOP_S) and remove its folder."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class LocalImgsimClient(ImgsimClient):
    """An ImgsimClient whose `close` also stops its private server."""

    local: LocalServer

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.local.stop()


def start(
    config: ClientConfig | None = None,
    on_status: Callable[[str], None] | None = None,
    extra_args: tuple[str, ...] = (),
) -> LocalImgsimClient:
    """A client of a new private server, once it is ready (`config`'s timeouts and
    credentials; its target is replaced). Closing the client stops the server."""
    from dataclasses import asdict, replace

    local = LocalServer(extra_args)
    try:
        local.wait_listening()
        cfg = replace(config or ClientConfig(), target=local.target, tls_ca=None, auth_token="")
        client = LocalImgsimClient(**asdict(cfg))
        client.local = local
        client.wait_ready(on_status=on_status)
    except BaseException:
        local.stop()
        raise
    return client


@contextmanager
def local_server(
    config: ClientConfig | None = None, on_status: Callable[[str], None] | None = None
) -> Iterator[ImgsimClient]:
    """`with local_server() as client:` a private server for the block (see `start`)."""
    client = start(config, on_status)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def connected(
    client: ImgsimClient | str | None, on_status: Callable[[str], None] | None = None
) -> Iterator[ImgsimClient]:
    """What a library call that needs a server uses: `client` as given; an address, connected
    for the call; or with neither, a private local server for the call."""
    if isinstance(client, ImgsimClient):
        yield client
    elif isinstance(client, str):
        with ClientConfig(client).connect(on_status) as made:
            yield made
    else:
        with local_server(on_status=on_status) as made:
            yield made
