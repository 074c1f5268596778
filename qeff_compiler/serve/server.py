"""Run the app under uvicorn in this process, with a graceful stop.

SIGTERM or Ctrl-C first drains: new generation requests get 503 while those in flight finish (for at most
`drain_timeout_s`); then uvicorn shuts down and the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import logging
import socket
import time
from types import FrameType

import uvicorn

from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.serve import DEFAULT_DRAIN_TIMEOUT_S
from qeff_compiler.serve.app import ServerSettings, ServerState, create_app

log = logging.getLogger("qeff_compiler.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first signal stops admitting instead of closing the listening socket: a client that
    arrives meanwhile hears 503 rather than 'connection refused'."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_deadline is None:
            self.state.draining = True
            self.drain_deadline = time.monotonic() + self.drain_timeout_s
            log.info("draining: finishing %d request(s), admitting none", self.state.in_flight)
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.state.in_flight == 0:
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                log.warning("drain timeout: %d request(s) still in flight are cut", self.state.in_flight)
                self.should_exit = True
        return await super().on_tick(counter)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads so a taken port fails at once and clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: ServerSettings, host: str, port: int, drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S) -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and return."""
    settings.check()
    if not drain_timeout_s >= 0:
        raise InvalidArgumentError(f"--drain-timeout must be ≥ 0 seconds, got {drain_timeout_s!r}")
    sock = listen(host, port)
    try:
        state = ServerState.load(settings)
        config = uvicorn.Config(
            create_app(state),
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=5,
            access_log=False,
        )
        print(
            f"serving {settings.name!r} on http://{host}:{port}/v1 ({state.engine.scheduler.num_slots} slots, "
            f"{settings.engine} engine); SIGTERM or Ctrl-C drains and stops",
            flush=True,
        )
        DrainingServer(config, state, drain_timeout_s).run(sockets=[sock])
    finally:
        sock.close()
