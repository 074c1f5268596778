"""Helpers of the serving tests: an artifact to serve, a `qeffc serve` subprocess on a free loopback port, and
reading its Prometheus metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from prometheus_client.parser import text_string_to_metric_families

import qeff_compiler as qc
from qeff_compiler.data import TINY_MPT
from tests.conftest import random_model, tiny_config

REPO = Path(__file__).resolve().parents[1]
#: the served model: ctx_len leaves room for ragged prompts and long completions; 8 slots
CTX_LEN, PREFILL_LEN, SLOTS = 128, 16, 8
#: how long a server may take to load (the machine may be shared) and a request to answer
START_TIMEOUT_S, REQUEST_TIMEOUT_S = 180.0, 120.0


@dataclass(frozen=True)
class ServedModel:
    compiled: qc.CompiledModel
    artifact: Path
    tokenizer: Any

    def save_with_chat_template(self, path: Path, template: str) -> Path:
        """The same model saved again with a chat template in its tokenizer_config.json."""
        source = self.compiled.source_directory
        assert source is not None
        model_dir = path.parent / f"{path.name}-model"
        shutil.copytree(source, model_dir)
        config_file = model_dir / "tokenizer_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "chat_template": template}))
        self.compiled.source_directory = model_dir
        try:
            self.compiled.save(path)
        finally:
            self.compiled.source_directory = source
        return path


def build_served_model(root: Path) -> ServedModel:
    """The smallest setup: a 2-layer random MPT with the shipped tokenizer, fp32, 8 continuous-batching slots."""
    from transformers import AutoTokenizer

    model_dir = root / "model"
    random_model(tiny_config(vocab_size=2048, max_seq_len=CTX_LEN)).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_MPT / name, model_dir / name)
    compiled = qc.compile(model_dir, ctx_len=CTX_LEN, prefill_len=PREFILL_LEN, full_batch_size=SLOTS, precision="fp32")
    compiled.save(root / "artifact")
    return ServedModel(compiled, root / "artifact", AutoTokenizer.from_pretrained(root / "artifact"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`qeffc serve ARGS` in a subprocess on a free loopback port; its output goes to a log file."""

    def __init__(self, artifact: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        # one torch thread, as the test process uses (tests/conftest.py): tiny steps gain nothing from more
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "qeff_compiler.cli.main", "serve", str(artifact), "--port", str(self.port)]
        with log.open("w") as out:
            self.process = subprocess.Popen([*command, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                status, _ = self.get("/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.kill()
        raise AssertionError(f"the server did not answer /health within {START_TIMEOUT_S} s:\n{self.log.read_text()}")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            f"{self.url}{path}", data=body, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        status, text = self.get("/metrics")
        assert status == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples
        }

    def rss_anon_kib(self) -> int:
        """The server's anonymous resident memory (RssAnon), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        raise AssertionError("no RssAnon in /proc/PID/status")

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def error_body(raw: bytes) -> dict[str, Any]:
    """An OpenAI error answer, checked for its shape."""
    body = json.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert "Traceback" not in raw.decode()
    return dict(body["error"])
