"""The llamacpp engine container's arguments, run by the real llama-server with SmolLM2
(setup/llamacpp.sh): the builder's flags, probes, metrics and sleep protocol hold for the
engine itself, not only for its README."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from kocoon.api.model import ModelDeploymentSpec
from kocoon.builders import engines
from kocoon.builders.context import BuildSettings
from kocoon.devcluster import engines as dev_engines
from kocoon.devcluster.processes import free_port

pytestmark = pytest.mark.engine


def test_llama_server_runs_the_built_arguments_and_sleeps_by_the_protocol(
    tmp_path: Path,
) -> None:
    """The exact `args` the builder makes (address and port moved to loopback through
    `engine.args`, as a user could) start llama-server with SmolLM2; the probes' endpoint,
    the metrics endpoint and the sleep protocol's status answer as the builder says."""
    try:
        server, model = dev_engines.llama_server(), dev_engines.smollm2_model()
    except dev_engines.EngineNotInstalledError as error:
        pytest.skip(str(error))
    port = free_port()
    built = engines.build(
        engines.EngineInputs(
            spec=ModelDeploymentSpec.model_validate(
                {
                    "model": {"uri": "oci://kocoon.local/smollm2:local"},
                    "engine": {
                        "type": "llamacpp",
                        "args": ["--host", "127.0.0.1", "--port", str(port)],
                    },
                    "wakeStrategy": "engineSleep",
                    "scaling": {"scaleDownDelay": "1s", "targetConcurrency": 2},
                    "resources": {"limits": {"cpu": "2"}},
                }
            ),
            model_path=str(model),
            served_model_name="served",
            settings=BuildSettings(),
        )
    )
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "llama-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(server), *built.container["args"]],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        dev_engines.wait_healthy(base, timeout=60, pid=process.pid)
        assert built.container["readinessProbe"]["httpGet"]["path"] == "/health"
        status, models = dev_engines.http_json(f"{base}/v1/models")
        assert status == 200
        assert [m["id"] for m in models["data"]] == ["served"]
        with urllib.request.urlopen(f"{base}{built.metrics_path}", timeout=5) as response:
            assert response.status == 200
            assert b"llamacpp:" in response.read()
        answer = _complete(base)
        protocol = built.sleep
        assert protocol is not None
        assert protocol.status is not None
        assert protocol.status_field is not None
        deadline = time.monotonic() + 30
        asleep: object = None
        while time.monotonic() < deadline:
            _, state = dev_engines.http_json(f"{base}{protocol.status.path}")
            asleep = state.get(protocol.status_field)
            if asleep is True:
                break
            time.sleep(0.2)
        assert asleep is True, log.read_text(errors="replace")[-2000:]
        assert dev_engines.http_json(f"{base}/health")[0] == 200  # asleep is not unhealthy
        assert _complete(base) == answer  # the next request wakes it (protocol.wake is None)
        _, state = dev_engines.http_json(f"{base}{protocol.status.path}")
        assert state.get(protocol.status_field) is False
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _complete(base: str) -> str:
    body = json.dumps(
        {
            "model": "served",
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 8,
            "temperature": 0,
        }
    ).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        content: str = json.loads(response.read())["choices"][0]["message"]["content"]
    return content
