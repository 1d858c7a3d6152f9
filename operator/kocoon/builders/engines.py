"""Engine → container: what each inference engine's documentation says it needs to serve.

One function per engine (`vllm`, `sglang`, `trtllm`, `llamacpp`), each pure: the deployment,
the path its weights are mounted at and the settings in; the engine's container (image,
command and arguments, environment, port, probes on the engine's own endpoints, drain) and
its sleep protocol, as data, out. The controller sends the sleep protocol's requests; the
router reads only the result (`status.backends[].sleeping`).

Every engine listens on `contract.ENGINE_PORT` on all addresses and serves its Prometheus
metrics on the same port. The flags and endpoints follow the engines' documentation, cited
per function; the unit tests hold each builder to those documents. Only llama-server runs on
this project's test machines; the GPU engines are built and validated, not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kocoon import contract
from kocoon.api.common import GpuSlice
from kocoon.api.model import Engine, ModelDeploymentSpec
from kocoon.builders.context import BuildSettings

PORT_NAME = "http"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
# Every engine writes caches under $HOME or $XDG_CACHE_HOME; the replica's user owns neither
# of the image's, so both point into a scratch volume mounted here.
SCRATCH_PATH = "/tmp"


@dataclass(frozen=True)
class EngineRequest:
    """One HTTP request to the engine, on its port."""

    method: Literal["GET", "POST"]
    path: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class SleepProtocol:
    """How an engine is put to sleep, woken and asked whether it sleeps.

    `sleep` None: the engine falls asleep by itself after `idle_seconds` without requests.
    `wake` None: the next request wakes it. `status` None: the engine has no such query, the
    controller knows from the requests it sent. `status_field`: the boolean in the JSON answer.
    """

    sleep: EngineRequest | None
    wake: EngineRequest | None
    status: EngineRequest | None = None
    status_field: str | None = None
    idle_seconds: int | None = None


@dataclass(frozen=True)
class EngineInputs:
    """What an engine builder reads: the spec, where the weights are and the name to serve."""

    spec: ModelDeploymentSpec
    model_path: str
    served_model_name: str
    settings: BuildSettings


@dataclass(frozen=True)
class EngineContainer:
    """The engine's container and what the pod around it must provide."""

    container: dict[str, Any]
    termination_grace_period_seconds: int
    # `engineSleep` only: how the controller puts the replica to sleep and wakes it.
    sleep: SleepProtocol | None = None
    # A memory-backed /dev/shm (NCCL and the engines' worker processes use it).
    needs_shm: bool = False
    metrics_path: str = METRICS_PATH
    annotations: dict[str, str] = field(default_factory=dict)


# --- shared pieces --------------------------------------------------------------------------


def tensor_parallel_size(gpu: GpuSlice | None) -> int:
    """The GPUs (or slices, or DRA devices) of one replica, which the engine splits the model
    over: the engines' tensor-parallel size."""
    return gpu.count if gpu is not None else 1


def gpu_memory_fraction(gpu: GpuSlice | None, settings: BuildSettings) -> float:
    """The share of GPU memory the engine may take. A time-sliced GPU is shared with other
    pods that see the whole device, so the engine takes less there."""
    if gpu is not None and gpu.mode == "timeSliced":
        return settings.shared_gpu_memory_fraction
    return settings.gpu_memory_fraction


def _fraction(value: float) -> str:
    return f"{value:g}"


def with_user_args(
    ours: Sequence[tuple[tuple[str, ...], str | None]], user_args: Sequence[str]
) -> list[str]:
    """Our flags (each: its spellings, its value or None for a switch), less those the user's
    `engine.args` set in any spelling (`--flag v` or `--flag=v`), then the user's args."""
    given = {arg.split("=", 1)[0] for arg in user_args if arg.startswith("-")}
    args: list[str] = []
    for spellings, value in ours:
        if given.intersection(spellings):
            continue
        args.append(spellings[0])
        if value is not None:
            args.append(value)
    return args + list(user_args)


def _env(spec: ModelDeploymentSpec, ours: dict[str, str]) -> list[dict[str, Any]]:
    """Our variables, then the user's (`engine.env` wins on a clash)."""
    user = [env.to_wire() for env in spec.engine.env]
    names = {env["name"] for env in user}
    return [{"name": k, "value": v} for k, v in ours.items() if k not in names] + user


def _http_probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _probes(settings: BuildSettings, health: str = HEALTH_PATH) -> dict[str, Any]:
    """Startup (loading the weights may take long), readiness and liveness on `health`.

    The startup probe asks every second: a replica waking from zero is held back by nothing
    but this probe once the engine answers, and asking `/health` is cheap for every engine."""
    startup_period = 1
    return {
        "startupProbe": _http_probe(
            health,
            startup_period,
            max(1, math.ceil(settings.engine_startup_seconds / startup_period)),
            timeout=1,
        ),
        "readinessProbe": _http_probe(health, 5, 2),
        "livenessProbe": _http_probe(health, 10, 6),
    }


def _drain(seconds: int) -> dict[str, Any]:
    """Before SIGTERM, pause so the router has dropped the replica (it watches the pod's
    deletion) and sends it nothing new. A sleep action: no shell needed in the image."""
    return {"preStop": {"sleep": {"seconds": seconds}}}


def _container(
    inputs: EngineInputs,
    *,
    image: str,
    command: list[str] | None,
    args: list[str],
    env: dict[str, str],
) -> dict[str, Any]:
    settings = inputs.settings
    container: dict[str, Any] = {
        "name": contract.ENGINE_CONTAINER,
        "image": inputs.spec.engine.image or image,
        "args": args,
        "ports": [{"name": PORT_NAME, "containerPort": contract.ENGINE_PORT, "protocol": "TCP"}],
        "env": _env(
            inputs.spec,
            {"HOME": SCRATCH_PATH, "XDG_CACHE_HOME": f"{SCRATCH_PATH}/.cache", **env},
        ),
        **_probes(settings),
        "lifecycle": _drain(settings.engine_drain_seconds),
    }
    if command is not None:
        container["command"] = command
    return container


def _sleep_idle_seconds(spec: ModelDeploymentSpec) -> int:
    return max(1, int(spec.scaling.scale_down_delay.total_seconds()))


def _prometheus(metrics_path: str = METRICS_PATH) -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(contract.ENGINE_PORT),
        "prometheus.io/path": metrics_path,
    }


# --- the engines ----------------------------------------------------------------------------


def vllm(inputs: EngineInputs) -> EngineContainer:
    """vLLM's OpenAI-compatible server, `vllm serve <model>`.

    Flags (docs.vllm.ai, "vllm serve" CLI reference): `--served-model-name`, `--host`,
    `--port`, `--gpu-memory-utilization` (default 0.9), `--tensor-parallel-size`,
    `--enable-sleep-mode`. Endpoints: `GET /health`, `GET /metrics` (docs.vllm.ai, "Production
    Metrics"). Sleep mode (docs.vllm.ai, features/sleep_mode): `POST /sleep?level=1` offloads
    the weights to CPU memory and drops the KV cache, `POST /wake_up`, `GET /is_sleeping` →
    `{"is_sleeping": bool}`; the HTTP routes exist only with `VLLM_SERVER_DEV_MODE=1`
    (vllm/entrypoints/serve/sleep/api_router.py), so only the router and the operator may
    reach the port (the NetworkPolicy).
    """
    spec, settings = inputs.spec, inputs.settings
    sleeping = spec.wake_strategy == "engineSleep"
    ours: list[tuple[tuple[str, ...], str | None]] = [
        (("--served-model-name",), inputs.served_model_name),
        (("--host",), "0.0.0.0"),
        (("--port",), str(contract.ENGINE_PORT)),
        (("--gpu-memory-utilization",), _fraction(gpu_memory_fraction(spec.gpu, settings))),
        (("--tensor-parallel-size", "-tp"), str(tensor_parallel_size(spec.gpu))),
    ]
    if sleeping:
        ours.append((("--enable-sleep-mode",), None))
    env = {"HF_HUB_OFFLINE": "1"}  # the weights are local; never reach the hub from the engine
    if sleeping:
        env["VLLM_SERVER_DEV_MODE"] = "1"
    container = _container(
        inputs,
        image=settings.engine_images.vllm,
        command=["vllm", "serve"],
        args=[inputs.model_path, *with_user_args(ours, spec.engine.args)],
        env=env,
    )
    protocol = SleepProtocol(
        sleep=EngineRequest("POST", "/sleep?level=1"),
        wake=EngineRequest("POST", "/wake_up"),
        status=EngineRequest("GET", "/is_sleeping"),
        status_field="is_sleeping",
    )
    return EngineContainer(
        container=container,
        termination_grace_period_seconds=settings.gpu_engine_grace_seconds,
        sleep=protocol if sleeping else None,
        needs_shm=True,
        annotations=_prometheus(),
    )


def sglang(inputs: EngineInputs) -> EngineContainer:
    """SGLang's server, `python3 -m sglang.launch_server`.

    Flags (docs.sglang.io, advanced_features/server_arguments): `--model-path`,
    `--served-model-name`, `--host`, `--port`, `--mem-fraction-static` (default 0.9), `--tp`,
    `--enable-metrics` (serves `/metrics`). `GET /health`. Kubernetes pods need a
    memory-backed /dev/shm (same page). Sleep (docs.sglang.io, advanced_features/
    sglang_for_rl, "Engine Sleep and Wake Up"): started with `--enable-memory-saver`,
    `POST /release_memory_occupation` frees GPU memory and `POST /resume_memory_occupation`
    takes it back; there is no query for the state.
    """
    spec, settings = inputs.spec, inputs.settings
    sleeping = spec.wake_strategy == "engineSleep"
    ours: list[tuple[tuple[str, ...], str | None]] = [
        (("--served-model-name",), inputs.served_model_name),
        (("--host",), "0.0.0.0"),
        (("--port",), str(contract.ENGINE_PORT)),
        (("--mem-fraction-static",), _fraction(gpu_memory_fraction(spec.gpu, settings))),
        (("--tp", "--tp-size", "--tensor-parallel-size"), str(tensor_parallel_size(spec.gpu))),
        (("--enable-metrics",), None),
    ]
    if sleeping:
        ours.append((("--enable-memory-saver",), None))
    container = _container(
        inputs,
        image=settings.engine_images.sglang,
        command=["python3", "-m", "sglang.launch_server"],
        args=["--model-path", inputs.model_path, *with_user_args(ours, spec.engine.args)],
        env={"HF_HUB_OFFLINE": "1"},
    )
    protocol = SleepProtocol(
        sleep=EngineRequest("POST", "/release_memory_occupation", {}),
        wake=EngineRequest("POST", "/resume_memory_occupation", {}),
    )
    return EngineContainer(
        container=container,
        termination_grace_period_seconds=settings.gpu_engine_grace_seconds,
        sleep=protocol if sleeping else None,
        needs_shm=True,
        annotations=_prometheus(),
    )


def trtllm(inputs: EngineInputs) -> EngineContainer:
    """TensorRT-LLM's OpenAI-compatible server, `trtllm-serve <model>`.

    Flags (nvidia.github.io/TensorRT-LLM, commands/trtllm-serve): `--host`, `--port`,
    `--tp_size`, `--served_model_name`, `--kv_cache_free_gpu_memory_fraction`. Endpoints:
    `/health`, `/metrics`, `/version` (same page). No sleep over HTTP (its sleep/wakeup is a
    prototype Python API), so no `engineSleep` (the API refuses it).
    """
    spec, settings = inputs.spec, inputs.settings
    ours: list[tuple[tuple[str, ...], str | None]] = [
        (("--host",), "0.0.0.0"),
        (("--port",), str(contract.ENGINE_PORT)),
        (("--tp_size",), str(tensor_parallel_size(spec.gpu))),
        (("--served_model_name",), inputs.served_model_name),
        (
            ("--kv_cache_free_gpu_memory_fraction",),
            _fraction(gpu_memory_fraction(spec.gpu, settings)),
        ),
    ]
    container = _container(
        inputs,
        image=settings.engine_images.trtllm,
        command=["trtllm-serve"],
        args=[inputs.model_path, *with_user_args(ours, spec.engine.args)],
        env={"HF_HUB_OFFLINE": "1"},
    )
    return EngineContainer(
        container=container,
        termination_grace_period_seconds=settings.gpu_engine_grace_seconds,
        needs_shm=True,
        annotations=_prometheus(),
    )


def llamacpp_threads(spec: ModelDeploymentSpec) -> int | None:
    """CPU threads: the replica's CPU limit, else its request, rounded up; None (the engine
    decides) when neither is set."""
    if spec.resources is None:
        return None
    for amounts in (spec.resources.limits, spec.resources.requests):
        if amounts is not None and amounts.cpu is not None:
            return max(1, math.ceil(amounts.cpu.value))
    return None


def llamacpp_parallel(spec: ModelDeploymentSpec, settings: BuildSettings) -> int:
    """Server slots: the requests per replica the autoscaler aims for, within the setting."""
    return max(1, min(spec.scaling.target_concurrency, settings.llamacpp_max_parallel))


def llamacpp(inputs: EngineInputs) -> EngineContainer:
    """llama.cpp's `llama-server`, on CPU. The image's entrypoint is the server.

    Flags (llama.cpp tools/server/README.md): `-m` the GGUF file, `--host`, `--port`
    (default 8080), `-a` the name served in `model`, `-c` the context (split across slots),
    `-np` slots served at once, `-t` threads, `--metrics` (Prometheus `/metrics`),
    `--no-webui`, `--sleep-idle-seconds N`. `GET /health` answers 503 "Loading model" while
    loading, then 200 (also while asleep). Sleeping on idle (same README): after N idle
    seconds the model is unloaded and the next request reloads it; `GET /props` reports
    `is_sleeping`, and `/health`, `/props`, `/models`, `/metrics` neither wake it nor reset
    the timer. llama-server takes `--flag value`, not `--flag=value`, in `engine.args` too.
    """
    spec, settings = inputs.spec, inputs.settings
    sleeping = spec.wake_strategy == "engineSleep"
    parallel = llamacpp_parallel(spec, settings)
    ours: list[tuple[tuple[str, ...], str | None]] = [
        (("-m", "--model"), inputs.model_path),
        (("--host",), "0.0.0.0"),
        (("--port",), str(contract.ENGINE_PORT)),
        (("-a", "--alias"), inputs.served_model_name),
        (("-c", "--ctx-size"), str(settings.llamacpp_context_per_slot * parallel)),
        (("-np", "--parallel"), str(parallel)),
        (("--metrics",), None),
        (("--no-webui", "--webui", "--no-ui", "--ui"), None),
    ]
    threads = llamacpp_threads(spec)
    if threads is not None:
        ours.append((("-t", "--threads"), str(threads)))
    idle = _sleep_idle_seconds(spec) if sleeping else None
    if idle is not None:
        ours.append((("--sleep-idle-seconds",), str(idle)))
    container = _container(
        inputs,
        image=settings.engine_images.llamacpp,
        command=None,
        args=with_user_args(ours, spec.engine.args),
        env={},
    )
    protocol = SleepProtocol(
        sleep=None,
        wake=None,
        status=EngineRequest("GET", "/props"),
        status_field="is_sleeping",
        idle_seconds=idle,
    )
    return EngineContainer(
        container=container,
        termination_grace_period_seconds=settings.cpu_engine_grace_seconds,
        sleep=protocol if sleeping else None,
        annotations=_prometheus(),
    )


BUILDERS: dict[str, Callable[[EngineInputs], EngineContainer]] = {
    "vllm": vllm,
    "sglang": sglang,
    "trtllm": trtllm,
    "llamacpp": llamacpp,
}


def build(inputs: EngineInputs) -> EngineContainer:
    """The container of `inputs.spec.engine.type`."""
    engine: Engine = inputs.spec.engine.type
    return BUILDERS[engine](inputs)


def default_image(engine: Engine, settings: BuildSettings) -> str:
    """The image an engine runs when `engine.image` is empty."""
    images = settings.engine_images
    return {
        "vllm": images.vllm,
        "sglang": images.sglang,
        "trtllm": images.trtllm,
        "llamacpp": images.llamacpp,
    }[engine]


def has_python(engine: Engine) -> bool:
    """Whether the engine's default image has Python and `huggingface_hub` (vLLM, SGLang and
    TensorRT-LLM images do; the llama-server image is the server alone)."""
    return engine != "llamacpp"
