"""`qeffc serve --ray`: the same FastAPI app deployed with Ray Serve, one replica per simulated card.

Each replica loads the artifact and runs its own engine loop; Ray Serve's proxy routes HTTP requests between
replicas. A replica claims `num_devices` units (the SoCs the artifact was compiled for) of the custom resource
`ai100_card`, so Ray places replicas only on nodes that declare cards (`ray start --resources
'{"ai100_card": 4}'`) and never puts more replicas on a node than it has cards. Without `--address`, a local Ray
instance is started on loopback with exactly the cards the replicas need.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from qeff_compiler.compiler import load_compiled
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.serve.app import ServerSettings
from qeff_compiler.serve.tokenizer import load_tokenizer

#: the custom Ray resource a replica claims, one unit per simulated SoC of the artifact
CARD_RESOURCE = "ai100_card"
#: the Ray Serve application name
APP_NAME = "qeff"


def run_ray(settings: ServerSettings, host: str, port: int, replicas: int, address: str | None) -> None:
    """Deploy `replicas` replicas, serve until SIGTERM or Ctrl-C, then shut Serve (and a local Ray) down."""
    settings.check()
    if not isinstance(replicas, int) or replicas < 1:
        raise InvalidArgumentError(f"--replicas must be a positive integer, got {replicas!r}")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InvalidArgumentError(
            "--ray needs Ray Serve, which is not installed: pip install 'qeff-compiler[ray]'"
        ) from None
    model = load_compiled(settings.artifact)  # refuse a bad artifact here, not in every replica
    load_tokenizer(settings.artifact)
    cards = model.options.num_devices
    slots = model.options.full_batch_size or model.options.batch_size
    del model
    if address is None:
        ray.init(
            num_cpus=replicas + 1,
            resources={CARD_RESOURCE: replicas * cards},
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=100 * 2**20,
            log_to_driver=False,
        )
    else:
        ray.init(address=address, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(settings, replicas, cards, slots).bind(), name=APP_NAME, route_prefix="/")
        print(f"serving {settings.name} on http://{host}:{port}/v1 with {replicas} Ray Serve replica(s)", flush=True)
        _wait_for_signal()
        serve.shutdown()
    finally:
        ray.shutdown()


def deployment(settings: ServerSettings, replicas: int, cards: int, slots: int) -> Any:
    """The Ray Serve deployment: the app of `serve.app`, built inside each replica, each claiming `cards` cards."""
    from ray import serve

    def build_app() -> Any:
        from qeff_compiler.serve.app import ServerState, create_app

        return create_app(ServerState.load(settings))

    ingress = serve.ingress(build_app)()
    return serve.deployment(
        name="qeff-model",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 1, "resources": {CARD_RESOURCE: cards}},
        # the app answers 429 itself past --max-queue; Ray must not queue in front of it
        max_ongoing_requests=settings.max_queue + slots,
    )(ingress)


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
