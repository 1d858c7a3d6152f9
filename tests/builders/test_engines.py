"""Each engine's container against the engine's own documentation.

The flags and endpoints asserted here are the documented ones; the comment above each test
names the document. Only llama-server runs on this project's machines (tests/node and the
router's tests run it); the GPU engines' containers are checked here and validated by a
Kubernetes API server in test_model_builders.py, not run.
"""

from __future__ import annotations

from typing import Any

import pytest

from kocoon import contract
from kocoon.api.model import ModelDeploymentSpec
from kocoon.builders import engines
from kocoon.builders.context import BuildSettings, EngineImages

pytestmark = pytest.mark.unit

SETTINGS = BuildSettings()
MODEL = "/models/source"


def spec(engine_type: str, **fields: Any) -> ModelDeploymentSpec:
    document: dict[str, Any] = {
        "model": {"uri": "oci://example.org/weights:1"},
        "engine": {"type": engine_type},
    }
    for key, value in fields.items():
        document[key] = {**document[key], **value} if key == "engine" else value
    return ModelDeploymentSpec.model_validate(document)


def build(
    engine_type: str, settings: BuildSettings = SETTINGS, **fields: Any
) -> engines.EngineContainer:
    return engines.build(
        engines.EngineInputs(
            spec=spec(engine_type, **fields),
            model_path=MODEL,
            served_model_name="served",
            settings=settings,
        )
    )


def flag(args: list[str], name: str) -> str:
    """The value after `name` in `args` (exactly one occurrence)."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def probe_paths(container: dict[str, Any]) -> dict[str, str]:
    return {
        kind: container[kind]["httpGet"]["path"]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }


GPU2 = {"mode": "wholeGPU", "count": 2}


# vLLM, "vllm serve" CLI reference (docs.vllm.ai/en/latest/cli/serve): the model is the
# positional argument; --served-model-name, --host, --port, --gpu-memory-utilization,
# --tensor-parallel-size. "Production Metrics" (docs.vllm.ai/en/latest/usage/metrics):
# GET /metrics on the API server's port. /health is the server's health endpoint.
def test_vllm_serves_the_model_with_the_documented_flags() -> None:
    built = build("vllm", gpu=GPU2)
    container = built.container
    assert container["name"] == contract.ENGINE_CONTAINER
    assert container["image"] == EngineImages().vllm
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[0] == MODEL
    assert flag(args, "--served-model-name") == "served"
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == str(contract.ENGINE_PORT)
    assert flag(args, "--gpu-memory-utilization") == "0.9"
    assert flag(args, "--tensor-parallel-size") == "2"  # two GPUs → tensor parallel 2
    assert "--enable-sleep-mode" not in args
    assert container["ports"] == [
        {"name": "http", "containerPort": contract.ENGINE_PORT, "protocol": "TCP"}
    ]
    assert set(probe_paths(container).values()) == {"/health"}
    assert built.metrics_path == "/metrics"
    assert built.sleep is None  # coldStart
    assert built.needs_shm is True
    assert env(container)["HF_HUB_OFFLINE"] == "1"
    assert "VLLM_SERVER_DEV_MODE" not in env(container)


# vLLM sleep mode (docs.vllm.ai/en/latest/features/sleep_mode): --enable-sleep-mode; level 1
# offloads weights to CPU memory; POST /sleep?level=1, POST /wake_up, GET /is_sleeping →
# {"is_sleeping": ...}. The routes are attached only when VLLM_SERVER_DEV_MODE is set
# (vllm/entrypoints/serve/sleep/api_router.py: `if not envs.VLLM_SERVER_DEV_MODE: return`).
def test_vllm_engine_sleep_enables_the_sleep_routes_and_describes_the_protocol() -> None:
    built = build("vllm", wakeStrategy="engineSleep")
    assert "--enable-sleep-mode" in built.container["args"]
    assert env(built.container)["VLLM_SERVER_DEV_MODE"] == "1"
    assert built.sleep == engines.SleepProtocol(
        sleep=engines.EngineRequest("POST", "/sleep?level=1"),
        wake=engines.EngineRequest("POST", "/wake_up"),
        status=engines.EngineRequest("GET", "/is_sleeping"),
        status_field="is_sleeping",
    )


# SGLang server arguments (docs.sglang.io/advanced_features/server_arguments): `python -m
# sglang.launch_server --model-path ... --tp 2`; --served-model-name, --host, --port,
# --mem-fraction-static (default 0.9), --enable-metrics; a memory-backed /dev/shm on
# Kubernetes. GET /health (native API).
def test_sglang_serves_the_model_with_the_documented_flags() -> None:
    built = build("sglang", gpu=GPU2)
    container = built.container
    assert container["image"] == EngineImages().sglang
    assert container["command"] == ["python3", "-m", "sglang.launch_server"]
    args = container["args"]
    assert flag(args, "--model-path") == MODEL
    assert flag(args, "--served-model-name") == "served"
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == str(contract.ENGINE_PORT)
    assert flag(args, "--mem-fraction-static") == "0.9"
    assert flag(args, "--tp") == "2"
    assert "--enable-metrics" in args
    assert "--enable-memory-saver" not in args
    assert set(probe_paths(container).values()) == {"/health"}
    assert built.needs_shm is True
    assert built.sleep is None


# SGLang engine sleep (docs.sglang.io/advanced_features/sglang_for_rl, "Fine-Grained Engine
# Sleep and Wake Up"): --enable-memory-saver, POST /release_memory_occupation and POST
# /resume_memory_occupation; SGLang has no GET for the state.
def test_sglang_engine_sleep_uses_release_and_resume_memory_occupation() -> None:
    built = build("sglang", wakeStrategy="engineSleep")
    assert "--enable-memory-saver" in built.container["args"]
    assert built.sleep is not None
    assert built.sleep.sleep == engines.EngineRequest("POST", "/release_memory_occupation", {})
    assert built.sleep.wake == engines.EngineRequest("POST", "/resume_memory_occupation", {})
    assert built.sleep.status is None


# trtllm-serve (nvidia.github.io/TensorRT-LLM/latest/commands/trtllm-serve): `trtllm-serve
# <model> --host --port --tp_size`, --served_model_name, --kv_cache_free_gpu_memory_fraction;
# the server also serves /health, /metrics and /version.
def test_trtllm_serves_the_model_with_the_documented_flags() -> None:
    built = build("trtllm", gpu={"mode": "mig", "profile": "3g.40gb", "count": 4})
    container = built.container
    assert container["image"] == EngineImages().trtllm
    assert container["command"] == ["trtllm-serve"]
    args = container["args"]
    assert args[0] == MODEL
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == str(contract.ENGINE_PORT)
    assert flag(args, "--tp_size") == "4"
    assert flag(args, "--served_model_name") == "served"
    assert flag(args, "--kv_cache_free_gpu_memory_fraction") == "0.9"
    assert set(probe_paths(container).values()) == {"/health"}
    assert built.metrics_path == "/metrics"
    assert built.sleep is None
    # A checkpoint wake works for any engine: trtllm with checkpoint builds the same container.
    assert build("trtllm", wakeStrategy="checkpoint").sleep is None


# llama.cpp tools/server/README.md: -m FNAME, --host (default 127.0.0.1), --port (default
# 8080), -a/--alias, -c/--ctx-size, -np/--parallel, -t/--threads, --metrics,
# --no-webui; GET /health answers 503 {"message": "Loading model"} while loading.
def test_llamacpp_serves_the_gguf_with_the_documented_flags() -> None:
    built = build(
        "llamacpp",
        resources={"requests": {"cpu": "500m"}, "limits": {"cpu": "3"}},
        scaling={"targetConcurrency": 2},
    )
    container = built.container
    assert container["image"] == "kocoon.local/llamacpp:local"
    assert "command" not in container  # the image's entrypoint is llama-server
    args = container["args"]
    assert flag(args, "-m") == MODEL
    assert flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--port") == str(contract.ENGINE_PORT)
    assert flag(args, "-a") == "served"
    assert flag(args, "-np") == "2"
    assert flag(args, "-c") == str(2 * SETTINGS.llamacpp_context_per_slot)  # split per slot
    assert flag(args, "-t") == "3"  # the CPU limit, rounded up
    assert "--metrics" in args
    assert "--no-webui" in args
    assert "--sleep-idle-seconds" not in args
    assert set(probe_paths(container).values()) == {"/health"}
    assert built.needs_shm is False
    assert built.sleep is None


# llama.cpp tools/server/README.md, "Sleeping on Idle": --sleep-idle-seconds N unloads the
# model after N idle seconds, the next request reloads it, GET /props reports is_sleeping.
def test_llamacpp_engine_sleep_is_the_servers_own_idle_unload() -> None:
    built = build("llamacpp", wakeStrategy="engineSleep", scaling={"scaleDownDelay": "90s"})
    assert flag(built.container["args"], "--sleep-idle-seconds") == "90"
    assert built.sleep == engines.SleepProtocol(
        sleep=None,
        wake=None,
        status=engines.EngineRequest("GET", "/props"),
        status_field="is_sleeping",
        idle_seconds=90,
    )


def test_llamacpp_threads_are_left_to_the_engine_without_a_cpu_amount() -> None:
    args = build("llamacpp").container["args"]
    assert "-t" not in args
    assert "--threads" not in args


@pytest.mark.parametrize(
    ("engine_type", "user_args", "flag_name"),
    [
        ("vllm", ["--gpu-memory-utilization=0.5"], "--gpu-memory-utilization"),
        ("vllm", ["-tp", "8"], "--tensor-parallel-size"),
        ("sglang", ["--tp-size", "4"], "--tp"),
        ("llamacpp", ["--ctx-size", "8192"], "-c"),
        ("llamacpp", ["--alias=other"], "-a"),
    ],
)
def test_the_users_engine_args_replace_ours_in_any_spelling(
    engine_type: str, user_args: list[str], flag_name: str
) -> None:
    args = build(engine_type, engine={"args": user_args}).container["args"]
    assert flag_name not in args
    assert args[-len(user_args) :] == user_args


def test_the_users_image_and_env_win() -> None:
    container = build(
        "vllm",
        engine={
            "image": "registry.example/vllm:custom",
            "env": [{"name": "HF_HUB_OFFLINE", "value": "0"}],
        },
    ).container
    assert container["image"] == "registry.example/vllm:custom"
    names = [e["name"] for e in container["env"]]
    assert names.count("HF_HUB_OFFLINE") == 1
    assert env(container)["HF_HUB_OFFLINE"] == "0"


def test_default_images_come_from_the_settings() -> None:
    settings = BuildSettings(engine_images=EngineImages(llamacpp="other/llama:1"))
    assert build("llamacpp", settings).container["image"] == "other/llama:1"


def test_time_sliced_gpus_take_a_smaller_share_of_memory() -> None:
    args = build("vllm", gpu={"mode": "timeSliced"}).container["args"]
    assert flag(args, "--gpu-memory-utilization") == "0.45"
    assert flag(args, "--tensor-parallel-size") == "1"


def test_every_engine_drains_before_sigterm_without_a_shell() -> None:
    for engine in ("vllm", "sglang", "trtllm", "llamacpp"):
        built = build(engine)
        pre_stop = built.container["lifecycle"]["preStop"]
        assert pre_stop == {"sleep": {"seconds": SETTINGS.engine_drain_seconds}}
        assert built.termination_grace_period_seconds > SETTINGS.engine_drain_seconds
        startup = built.container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= SETTINGS.engine_startup_seconds
