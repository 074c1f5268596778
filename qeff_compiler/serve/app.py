"""The FastAPI app: OpenAI's completions, chat completions and models endpoints, health and Prometheus metrics,
over one engine loop (`engine.EngineLoop`) that the app's lifespan starts and stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from qeff_compiler.compiler import CompiledModel, check_engine, load_compiled
from qeff_compiler.errors import InvalidArgumentError
from qeff_compiler.runtime.generate import eos_token_ids
from qeff_compiler.runtime.sampling import SamplingConfig
from qeff_compiler.runtime.scheduler import ContinuousBatchScheduler
from qeff_compiler.serve import DEFAULT_MAX_QUEUE, openai_errors
from qeff_compiler.serve.engine import EngineLoop
from qeff_compiler.serve.generation import Generation, Piece
from qeff_compiler.serve.metrics import ServerMetrics
from qeff_compiler.serve.openai_errors import ApiError, bad_request, queue_full, shutting_down
from qeff_compiler.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from qeff_compiler.serve.tokenizer import load_tokenizer, require_tokenizer


@dataclass(frozen=True)
class ServerSettings:
    """What a server (or each Ray replica) is started with."""

    artifact: Path
    engine: str = "host"
    max_queue: int = DEFAULT_MAX_QUEUE
    model_name: str | None = None

    def check(self) -> None:
        """Refuse what is wrong with the settings before the model loads or a port is bound."""
        check_engine(self.engine)
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise InvalidArgumentError(f"--max-queue must be a positive integer, got {self.max_queue!r}")
        require_tokenizer(self.artifact)

    @property
    def name(self) -> str:
        """The model id clients send: --model-name, or the artifact directory's name."""
        return self.model_name or self.artifact.resolve().name


@dataclass
class ServerState:
    """The loaded model, its tokenizer and engine loop, and whether the server still admits requests."""

    settings: ServerSettings
    model: CompiledModel
    tokenizer: Any
    engine: EngineLoop
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: int = 0

    @classmethod
    def load(cls, settings: ServerSettings) -> ServerState:
        """Load the artifact (checked against its manifest) and its tokenizer; the engine thread starts with the
        app."""
        settings.check()
        model = load_compiled(settings.artifact)
        tokenizer = load_tokenizer(settings.artifact)
        metrics = ServerMetrics()
        engine = EngineLoop(ContinuousBatchScheduler(model, engine=settings.engine), metrics)
        return cls(settings, model, tokenizer, engine, metrics)

    @property
    def ctx_len(self) -> int:
        return self.model.shapes.ctx_len

    @property
    def eos_ids(self) -> frozenset[int]:
        return eos_token_ids(self.model.config.eos_token_id)


def create_app(state: ServerState) -> FastAPI:
    """The app over a loaded model; its lifespan runs the engine thread."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.engine.start()
        try:
            yield
        finally:
            state.engine.close()

    app = FastAPI(title="qeff-compiler", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.server = state
    openai_errors.install(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "ok",
            "model": state.settings.name,
            "slots": state.engine.scheduler.num_slots,
            "live_slots": state.engine.scheduler.live_slots,
            "waiting": state.engine.waiting,
            "in_flight": state.in_flight,
            "pid": os.getpid(),
        }
        if state.engine.failure is not None:
            return JSONResponse({**body, "status": "failed", "reason": str(state.engine.failure)}, status_code=503)
        if state.draining:
            return JSONResponse({**body, "status": "draining"}, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        state.metrics.queue_depth.set(state.engine.scheduler.queue_depth)
        state.metrics.live_slots.set(state.engine.scheduler.live_slots)
        state.metrics.in_flight.set(state.in_flight)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Response:
        prompts = _completion_prompts(state, body.prompt)
        return _respond(state, body, prompts, "completions")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return _respond(state, body, [_chat_prompt(state, body)], "chat")

    return app


def _model_card(state: ServerState) -> dict[str, Any]:
    return {
        "id": state.settings.name,
        "object": "model",
        "created": state.created,
        "owned_by": "qeff-compiler",
        "max_model_len": state.ctx_len,
    }


def _completion_prompts(state: ServerState, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """One token list per prompt: a text, a list of texts, a token-id list, or a list of those (as OpenAI's)."""
    if isinstance(prompt, str):
        return [_encode(state, prompt)]
    ids: list[int] = []
    prompts: list[list[int]] = []
    for item in prompt:  # the schema admits only lists of one kind
        if isinstance(item, int):
            ids.append(item)
        else:
            prompts.append(_encode(state, item) if isinstance(item, str) else list(item))
    return [ids] if ids else prompts


def _encode(state: ServerState, text: str) -> list[int]:
    ids = list(state.tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise bad_request(f"the prompt {text!r} encodes to no tokens", "prompt")
    return ids


def _chat_prompt(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    if not getattr(state.tokenizer, "chat_template", None):
        raise bad_request(
            f"model {state.settings.name!r} has no chat template (its tokenizer_config.json sets no chat_template), "
            "so /v1/chat/completions cannot render messages; use /v1/completions with a prompt",
            "messages",
        )
    messages = [message.model_dump(exclude_none=True) for message in body.messages]
    rendered = state.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return _encode(state, str(rendered))


def _check_admission(state: ServerState, body: SamplingFields, prompts: Sequence[Sequence[int]]) -> list[int]:
    """Refuse what cannot be served (404, 400, 429, 503) before anything is submitted; returns each prompt's
    max_tokens."""
    if body.model != state.settings.name:
        raise ApiError(
            404,
            f"the model {body.model!r} does not exist; this server serves {state.settings.name!r}",
            param="model",
            code="model_not_found",
        )
    if state.draining:
        state.metrics.rejected.labels("503").inc()
        raise shutting_down()
    if state.engine.failure is not None:
        raise ApiError(503, str(state.engine.failure), kind="server_error", code="engine_failed")
    vocab, ctx_len = state.model.config.vocab_size, state.ctx_len
    limits = []
    for index, prompt in enumerate(prompts):
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"prompt {index} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}", "prompt")
        if len(prompt) >= ctx_len:
            raise bad_request(
                f"prompt {index} has {len(prompt)} tokens; this model's context is {ctx_len} tokens, prompt and "
                "completion together",
                "prompt",
            )
        limit = body.max_tokens if body.max_tokens is not None else ctx_len - len(prompt)
        if len(prompt) + limit > ctx_len:
            raise bad_request(
                f"prompt {index} ({len(prompt)} tokens) + max_tokens ({limit}) exceeds this model's context of "
                f"{ctx_len} tokens",
                "max_tokens",
            )
        limits.append(limit)
    if state.engine.waiting + len(prompts) > state.settings.max_queue:
        state.metrics.rejected.labels("429").inc()
        raise queue_full(state.settings.max_queue)
    return limits


def _sampling(body: SamplingFields) -> SamplingConfig:
    """temperature 0 is greedy (OpenAI's convention); anything else samples."""
    if body.temperature == 0:
        return SamplingConfig()
    return SamplingConfig(True, body.temperature, max(body.top_k, 0), body.top_p, body.seed)


def _respond(state: ServerState, body: SamplingFields, prompts: list[list[int]], endpoint: str) -> Response:
    limits = _check_admission(state, body, prompts)
    try:
        sampling = _sampling(body)
        generation = Generation(
            state.engine,
            state.metrics,
            endpoint,
            state.tokenizer,
            prompts,
            limits,
            sampling,
            state.eos_ids,
            body.stop_strings(),
            "chatcmpl" if endpoint == "chat" else "cmpl",
        )
    except InvalidArgumentError as error:
        raise bad_request(str(error)) from None
    shape = _ChatShape(state, generation) if endpoint == "chat" else _CompletionShape(state, generation)
    state.in_flight += 1
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return _Stream(_events(generation, shape, include_usage), state, generation, sep="\n", ping=0)
    return _Complete(state, generation, shape)


class _CompletionShape:
    """The OpenAI `text_completion` objects."""

    def __init__(self, state: ServerState, generation: Generation) -> None:
        self.state, self.generation = state, generation
        self.created = int(time.time())
        #: choices that have had a chunk (a chat stream names the role in a choice's first chunk)
        self.started: set[int] = set()

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.generation.id, "object": kind, "created": self.created, "model": self.state.settings.name}

    def whole(self, pieces: list[Piece]) -> dict[str, Any]:
        choices = [
            {"index": p.index, "text": p.text, "logprobs": None, "finish_reason": p.finish_reason} for p in pieces
        ]
        return {
            **self.head("text_completion"),
            "choices": choices,
            "usage": self.usage(),
            "qeff": self.extension(pieces),
        }

    def chunk(self, piece: Piece) -> dict[str, Any]:
        choice = {"index": piece.index, "text": piece.text, "logprobs": None, "finish_reason": piece.finish_reason}
        return {**self.head("text_completion"), "choices": [choice], "qeff": self.chunk_extension(piece)}

    def usage(self) -> dict[str, int]:
        prompt, completion = self.generation.prompt_tokens, self.generation.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def usage_chunk(self) -> dict[str, Any]:
        return {**self.head(self.chunk_object), "choices": [], "usage": self.usage()}

    chunk_object = "text_completion"

    def extension(self, pieces: list[Piece]) -> dict[str, Any]:
        """The `qeff` extension: token ids and latency per choice, on the host and the simulated device."""
        return {
            "simulated_device": self.state.model.simulation.device,
            "choices": [
                {"index": p.index, "token_ids": list(p.token_ids), **self.generation.timings[p.index].figures()}
                for p in pieces
            ],
        }

    def chunk_extension(self, piece: Piece) -> dict[str, Any]:
        extension: dict[str, Any] = {"token_ids": list(piece.token_ids)}
        if piece.finish_reason is not None:
            extension.update(
                self.generation.timings[piece.index].figures(), simulated_device=self.state.model.simulation.device
            )
        return extension


class _ChatShape(_CompletionShape):
    """The OpenAI `chat.completion` objects."""

    chunk_object = "chat.completion.chunk"

    def whole(self, pieces: list[Piece]) -> dict[str, Any]:
        choices = [
            {
                "index": p.index,
                "message": {"role": "assistant", "content": p.text},
                "logprobs": None,
                "finish_reason": p.finish_reason,
            }
            for p in pieces
        ]
        return {
            **self.head("chat.completion"),
            "choices": choices,
            "usage": self.usage(),
            "qeff": self.extension(pieces),
        }

    def chunk(self, piece: Piece) -> dict[str, Any]:
        delta = {"content": piece.text}
        if piece.index not in self.started:
            self.started.add(piece.index)
            delta = {"role": "assistant", **delta}
        choice = {"index": piece.index, "delta": delta, "logprobs": None, "finish_reason": piece.finish_reason}
        return {**self.head("chat.completion.chunk"), "choices": [choice], "qeff": self.chunk_extension(piece)}


async def _events(
    generation: Generation, shape: _CompletionShape, include_usage: bool
) -> AsyncIterator[dict[str, str]]:
    """The SSE events of a streamed answer: one chunk per piece, the usage chunk if asked, then [DONE]."""
    try:
        async for piece in generation.pieces():
            if piece.text or piece.finish_reason is not None or piece.token_ids:
                yield {"data": json.dumps(shape.chunk(piece))}
    except ApiError as error:
        yield {"data": json.dumps(error.body())}
    if include_usage:
        yield {"data": json.dumps(shape.usage_chunk())}
    yield {"data": "[DONE]"}


class _Stream(EventSourceResponse):
    """An SSE answer that, however it ends (done, client gone, server stopping), frees the request's slots."""

    def __init__(
        self, content: AsyncIterator[dict[str, str]], state: ServerState, generation: Generation, **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self.server, self.generation = state, generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.generation.close()
            self.server.in_flight -= 1


class _Complete(Response):
    """A whole answer, generated when the response is sent, so a client that leaves first frees its slots."""

    media_type = "application/json"

    def __init__(self, state: ServerState, generation: Generation, shape: _CompletionShape) -> None:
        super().__init__()
        self.server, self.generation, self.shape = state, generation, shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            run = asyncio.ensure_future(self.generation.run())
            gone = asyncio.ensure_future(_disconnected(receive))
            await asyncio.wait({run, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if not run.done():  # the client left: stop generating for it
                run.cancel()
                return
            try:
                answer: Response = JSONResponse(self.shape.whole(run.result()))
            except ApiError as error:
                answer = error.response()
            await answer(scope, receive, send)
        finally:
            self.generation.close()
            self.server.in_flight -= 1


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass
