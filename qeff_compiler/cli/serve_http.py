"""`qeffc serve`: an OpenAI-compatible HTTP server over a compiled artifact (FastAPI under uvicorn, or Ray Serve).

The server's modules (FastAPI, uvicorn, Ray) are imported only when the command runs, so every other command
starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qeff_compiler.cli.app import app
from qeff_compiler.serve import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_MAX_QUEUE  # constants only: no FastAPI


@app.command("serve")
def serve_command(
    artifact: Annotated[Path, typer.Argument(help="compiled artifact directory (with its tokenizer)")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on")] = 8000,
    engine: Annotated[
        str, typer.Option("--engine", help="what runs the numerics: host (reference) or onnxruntime (faster)")
    ] = "host",
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="requests waiting for a slot beyond which new ones get 429")
    ] = DEFAULT_MAX_QUEUE,
    drain_timeout: Annotated[
        float, typer.Option("--drain-timeout", help="seconds in-flight requests may take to finish after SIGTERM")
    ] = DEFAULT_DRAIN_TIMEOUT_S,
    ray: Annotated[bool, typer.Option("--ray", help="deploy with Ray Serve, one replica per simulated card")] = False,
    replicas: Annotated[int, typer.Option("--replicas", help="Ray Serve replicas (with --ray)")] = 1,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster to join (with --ray; default: start a local one)")
    ] = None,
) -> None:
    """Serve a compiled artifact over the OpenAI completions and chat-completions HTTP API."""
    from qeff_compiler.serve.app import ServerSettings

    settings = ServerSettings(artifact, engine, max_queue)
    if ray:
        from qeff_compiler.serve.ray_app import run_ray

        run_ray(settings, host, port, replicas, address)
        return
    if replicas != 1 or address is not None:
        from qeff_compiler.errors import InvalidArgumentError

        raise InvalidArgumentError("--replicas and --address apply to --ray only")
    from qeff_compiler.serve.server import serve

    serve(settings, host, port, drain_timeout)
