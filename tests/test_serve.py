"""`qeffc serve` end to end: the official `openai` client against a server in a subprocess on a loopback port.

One server process (module-scoped) answers the completions, error, load and disconnect tests; a second one, whose
tokenizer has a chat template, answers the chat test and is then stopped with SIGTERM under load. Every generated
token is compared with offline `CompiledModel.generate` (greedy) of the same prompt alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.serving import CTX_LEN, REPO, SLOTS, ServedModel, ServerProcess, build_served_model, error_body, metric

pytestmark = pytest.mark.e2e

#: a chat template for the second server (the shipped tokenizer has none)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    return build_served_model(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def server(served: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(served.artifact, tmp_path_factory.mktemp("server") / "server.log")
    yield process
    assert process.terminate() == 0


@pytest.fixture(scope="module")
def chat_server(served: ServedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server over a copy of the artifact whose tokenizer has a chat template; the SIGTERM test stops it."""
    root = tmp_path_factory.mktemp("chat")
    artifact = served.save_with_chat_template(root / "chat-artifact", CHAT_TEMPLATE)
    process = ServerProcess(artifact, root / "server.log", "--max-queue", "16")
    yield process
    process.kill()


def offline(served: ServedModel, prompt: list[int], max_tokens: int) -> list[int]:
    """What `CompiledModel.generate` produces for the prompt alone, greedy."""
    return list(served.compiled.generate([prompt], max_tokens).new_tokens[0])


def encode(served: ServedModel, text: str) -> list[int]:
    return list(served.tokenizer.encode(text, add_special_tokens=False))


def test_the_cli_imports_no_server_library_until_serve_runs() -> None:
    code = "import sys, qeff_compiler.cli.main; print(sorted({'fastapi', 'uvicorn', 'ray'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"


def test_completions_equal_offline_generate(served: ServedModel, server: ServerProcess) -> None:
    client = server.client()
    (model,) = client.models.list().data
    assert model.id == "artifact"
    cases = [("def fibonacci(n):", 24), ("import os\nimport sys\n\nclass Config:", 40), ("x", 7)]
    for text, max_tokens in cases:
        expected = offline(served, encode(served, text), max_tokens)
        whole = client.completions.create(model=model.id, prompt=text, max_tokens=max_tokens, temperature=0)
        extension = whole.model_extra["qeff"]
        assert extension["choices"][0]["token_ids"] == expected
        assert whole.choices[0].text == served.tokenizer.decode(expected, skip_special_tokens=True)
        assert whole.choices[0].finish_reason == ("length" if len(expected) == max_tokens else "stop")
        assert whole.usage.prompt_tokens == len(encode(served, text))
        assert whole.usage.completion_tokens == len(expected)
        assert 0 < extension["choices"][0]["simulated_ttft_s"] <= extension["choices"][0]["simulated_latency_s"]
        assert "simulated" in extension["simulated_device"] or extension["simulated_device"].startswith("ai100")

        stream = client.completions.create(
            model=model.id,
            prompt=text,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        tokens = [t for chunk in chunks if chunk.choices for t in chunk.model_extra["qeff"]["token_ids"]]
        assert tokens == expected
        assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(expected)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason

    # token-id prompts, two in one request: one choice each
    prompts = [encode(served, "def f(x):"), encode(served, "for i in range(10):")]
    both = client.completions.create(model=model.id, prompt=prompts, max_tokens=12, temperature=0)
    for choice, prompt in zip(sorted(both.choices, key=lambda c: c.index), prompts, strict=True):
        assert choice.text == served.tokenizer.decode(offline(served, prompt, 12), skip_special_tokens=True)


def test_stop_string_ends_the_text_before_it(served: ServedModel, server: ServerProcess) -> None:
    prompt = encode(served, "def fibonacci(n):")
    text = served.tokenizer.decode(offline(served, prompt, 40), skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), "the reference text should have a visible stop string in its middle"
    answer = server.client().completions.create(
        model="artifact", prompt=prompt, max_tokens=40, temperature=0, stop=[stop]
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].text == text[: text.index(stop)]


def test_chat_is_refused_without_a_chat_template(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="artifact", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400
    assert "no chat template" in caught.value.message


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "def f(x):", "max_tokens": CTX_LEN}, 400, "max_tokens"),  # prompt + max_tokens > ctx_len
        ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": 5}, 400, "prompt"),
        ({"prompt": [1, 2, 99999]}, 400, "prompt"),
        ({"prompt": "x", "n": 2}, 400, "n"),
        ({"prompt": "x", "max_token": 3}, 400, "max_token"),
        ({"prompt": "x", "logprobs": 2}, 400, "logprobs"),  # an OpenAI field this server does not implement
        ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
        ({"prompt": [[1, 2]] * 300}, 429, None),  # more prompts than --max-queue (256) admits
    ],
)
def test_bad_requests_get_openai_errors(server: ServerProcess, body: dict, status: int, param: str | None) -> None:
    raw_status, raw = server.request("POST", "/v1/completions", json.dumps({"model": "artifact", **body}).encode())
    assert raw_status == status, raw
    assert error_body(raw)["param"] == param


def test_malformed_json_and_unknown_routes(server: ServerProcess) -> None:
    status, raw = server.request("POST", "/v1/completions", b'{"model": "artifact", "prompt": ')
    assert status == 400 and "not valid JSON" in error_body(raw)["message"]
    status, raw = server.get("/v1/engines")
    assert status == 404 and error_body(raw)["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="no-such-model", prompt="x")


def test_every_documented_metric_is_exported(server: ServerProcess) -> None:
    documented = re.findall(r"^\| `(qeff_\w+)` \|", (REPO / "docs" / "serving.md").read_text(), flags=re.M)
    exported = "\n" + server.get("/metrics")[1].decode()
    assert len(documented) >= 10
    for name in documented:
        assert f"\n# HELP {name} " in exported, f"{name} is documented but not exported"
    clocks = {dict(labels).get("clock") for name, labels in server.metrics() if name.startswith("qeff_time_to_first")}
    assert clocks >= {"host", "simulated_device"}


def ragged_workload(served: ServedModel, count: int, seed: int) -> list[tuple[list[int], int, list[int]]]:
    """(prompt, max_tokens, expected tokens) of `count` requests of random prompt and completion lengths."""
    rng = random.Random(seed)
    workload = []
    for _ in range(count):
        prompt = [rng.randrange(1, 2048) for _ in range(rng.randint(1, 2 * 16))]
        max_tokens = rng.randint(1, 24)
        workload.append((prompt, max_tokens, offline(served, prompt, max_tokens)))
    return workload


async def _stream_all(server: ServerProcess, workload: list[tuple[list[int], int, list[int]]]) -> list[list[int]]:
    client = server.async_client()

    async def one(prompt: list[int], max_tokens: int) -> list[int]:
        stream = await client.completions.create(
            model="artifact", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        return [t async for chunk in stream for t in chunk.model_extra["qeff"]["token_ids"]]

    try:
        return await asyncio.gather(*(one(prompt, max_tokens) for prompt, max_tokens, _ in workload))
    finally:
        await client.close()


def test_64_concurrent_streams_complete_exactly_and_memory_stays_flat(
    served: ServedModel, server: ServerProcess
) -> None:
    workload = ragged_workload(served, 64, seed=15)
    rss = []
    for _ in range(2):
        before = server.metrics()
        got = asyncio.run(_stream_all(server, workload))
        after = server.metrics()
        for tokens, (_, _, expected) in zip(got, workload, strict=True):
            assert tokens == expected  # none lost, none duplicated, right count
        finished = sum(
            metric(after, "qeff_requests_total", endpoint="completions", finish_reason=reason)
            - metric(before, "qeff_requests_total", endpoint="completions", finish_reason=reason)
            for reason in ("length", "stop", "cancelled")
        )
        assert finished == len(workload)
        generated = metric(after, "qeff_generated_tokens_total") - metric(before, "qeff_generated_tokens_total")
        assert generated == sum(len(expected) for *_, expected in workload)
        assert metric(after, "qeff_slots_live") == 0 and metric(after, "qeff_requests_in_flight") == 0
        rss.append(server.rss_anon_kib())
    print(f"server RssAnon after round 1: {rss[0]} KiB, after round 2: {rss[1]} KiB")
    assert rss[1] - rss[0] < 8 * 1024, f"RssAnon grew from {rss[0]} KiB to {rss[1]} KiB across identical rounds"


def test_a_client_that_disconnects_frees_its_slot(served: ServedModel, server: ServerProcess) -> None:
    before = server.metrics()
    prompt = encode(served, "def f(x):")
    stream = server.client().completions.create(
        model="artifact", prompt=prompt, max_tokens=CTX_LEN - len(prompt), temperature=0, stream=True
    )
    received = [next(iter(stream)) for _ in range(3)]
    assert len(received) == 3
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = server.metrics()
        cancelled = metric(after, "qeff_requests_total", endpoint="completions", finish_reason="cancelled") - metric(
            before, "qeff_requests_total", endpoint="completions", finish_reason="cancelled"
        )
        if cancelled == 1 and metric(after, "qeff_slots_live") == 0:
            break
        time.sleep(0.05)
    assert cancelled == 1, "the disconnected request was not cancelled"
    assert metric(after, "qeff_slots_live") == 0
    generated = metric(after, "qeff_generated_tokens_total") - metric(before, "qeff_generated_tokens_total")
    assert generated < CTX_LEN - len(prompt), "the request ran to max_tokens instead of stopping"


def test_chat_completion_renders_the_template(served: ServedModel, chat_server: ServerProcess) -> None:
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "a loop"}]
    rendered = served.tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    expected = offline(served, encode(served, rendered), 16)
    answer = chat_server.client().chat.completions.create(
        model="chat-artifact", messages=messages, max_tokens=16, temperature=0
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == served.tokenizer.decode(expected, skip_special_tokens=True)
    stream = chat_server.client().chat.completions.create(
        model="chat-artifact", messages=messages, max_tokens=16, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(
    served: ServedModel, chat_server: ServerProcess
) -> None:
    prompts = [encode(served, f"def step_{i}(state):") for i in range(SLOTS)]
    max_tokens = CTX_LEN - max(len(p) for p in prompts)
    expected = [list(tokens) for tokens in served.compiled.generate(prompts, max_tokens).new_tokens]
    results: dict[int, list[int] | BaseException] = {}
    generating = threading.Barrier(len(prompts) + 1, timeout=120)

    def stream(index: int) -> None:
        tokens: list[int] = []
        try:
            chunks = chat_server.client().completions.create(
                model="chat-artifact", prompt=prompts[index], max_tokens=max_tokens, temperature=0, stream=True
            )
            for number, chunk in enumerate(chunks):
                tokens += chunk.model_extra["qeff"]["token_ids"]
                if number == 0:
                    generating.wait()
            results[index] = tokens
        except BaseException as error:  # reported by the comparison below
            results[index] = error

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(len(prompts))]
    for thread in threads:
        thread.start()
    generating.wait()  # every request has its first token
    chat_server.process.send_signal(signal.SIGTERM)
    while chat_server.get("/health")[0] != 503:  # the signal has been handled: draining
        time.sleep(0.01)
    with pytest.raises(openai.APIStatusError) as refused:
        chat_server.client().completions.create(model="chat-artifact", prompt="y", max_tokens=2)
    assert refused.value.status_code == 503
    for thread in threads:
        thread.join(120)
    assert chat_server.process.wait(60) == 0
    assert [results[index] for index in range(len(prompts))] == expected


def test_ray_replicas_claim_one_card_resource_per_simulated_soc(served: ServedModel) -> None:
    pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from qeff_compiler.serve.app import ServerSettings
    from qeff_compiler.serve.ray_app import CARD_RESOURCE, deployment

    built = deployment(ServerSettings(served.artifact), replicas=3, cards=2, slots=SLOTS)
    assert built.num_replicas == 3
    assert built.ray_actor_options["resources"] == {CARD_RESOURCE: 2}


def test_ray_serve_two_replicas_give_the_same_outputs(served: ServedModel, tmp_path: Path) -> None:
    """`qeffc serve --ray --replicas 2`: a local Ray instance on loopback (2 replicas, one simulated card each),
    stopped with SIGTERM (which shuts Serve and Ray down)."""
    pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")
    server = ServerProcess(served.artifact, tmp_path / "ray.log", "--ray", "--replicas", "2")
    try:
        deadline = time.monotonic() + 180
        while "Ray Serve replica(s)" not in server.log.read_text():  # printed once every replica is running
            assert time.monotonic() < deadline and server.process.poll() is None, server.log.read_text()
            time.sleep(0.5)
        pids = {json.loads(server.get("/health")[1])["pid"] for _ in range(16)}
        assert len(pids) == 2, f"Ray routed 16 health checks to {len(pids)} replica(s)"
        client = server.client()
        for text in ("def fibonacci(n):", "import os"):
            expected = offline(served, encode(served, text), 16)
            answer = client.completions.create(model="artifact", prompt=text, max_tokens=16, temperature=0)
            assert answer.model_extra["qeff"]["choices"][0]["token_ids"] == expected
            chunks = client.completions.create(model="artifact", prompt=text, max_tokens=16, temperature=0, stream=True)
            assert [t for chunk in chunks for t in chunk.model_extra["qeff"]["token_ids"]] == expected
        assert server.terminate(120) == 0
    finally:
        server.kill()
