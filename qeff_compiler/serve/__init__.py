"""`qeffc serve`: an OpenAI-compatible HTTP server over the continuous-batching scheduler.

Nothing is imported here, so `import qeff_compiler` never loads FastAPI, uvicorn or Ray: import the modules
(`serve.app`, `serve.server`, `serve.ray_app`) where they are needed.
"""

#: requests waiting for a slot beyond which new ones are refused with 429 (the default of --max-queue)
DEFAULT_MAX_QUEUE = 256
#: how long in-flight requests may take to finish after SIGTERM (the default of --drain-timeout)
DEFAULT_DRAIN_TIMEOUT_S = 30.0
