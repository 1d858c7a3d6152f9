"""The scale benchmark's request counting: what it reads from the API server's metrics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_scale", module)
    spec.loader.exec_module(module)
    return module


bench = _load()

DISPATCHED = "apiserver_flowcontrol_dispatched_requests_total"
REQUESTS = "apiserver_request_total"
WEBHOOK = "apiserver_admission_webhook_admission_duration_seconds"


def sample(metric: str, value: float, **labels: str) -> str:
    """One line of the Prometheus text format, as the API server writes it."""
    rendered = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"{metric}{{{rendered}}} {value}"


def flow(schema: str, value: float) -> str:
    return sample(DISPATCHED, value, flow_schema=schema, priority_level="workload-low")


def request(code: str, value: float) -> str:
    return sample(REQUESTS, value, code=code, group="", resource="pods", verb="GET")


def hook(suffix: str, operation: str, value: float) -> str:
    name = "default-sandbox.kocoon.io"
    return sample(WEBHOOK + suffix, value, name=name, operation=operation, type="admit")


BEFORE = "\n".join(
    [
        f"# HELP {DISPATCHED} [BETA] Number of requests executed",
        flow("bench-kocoon", 10),
        flow("bench-agent-sandbox", 4),
        flow("exempt", 900),
        request("200", 5),
        hook("_sum", "CREATE", 1),
        hook("_count", "CREATE", 10),
    ]
)
AFTER = "\n".join(
    [
        flow("bench-kocoon", 130),
        flow("bench-agent-sandbox", 4),
        flow("exempt", 2000),
        request("200", 45),
        request("404", 7),
        hook("_sum", "CREATE", 4),
        hook("_count", "CREATE", 20),
        hook("_sum", "UPDATE", 1),
        hook("_count", "UPDATE", 10),
    ]
)


def test_requests_are_counted_per_controller_flow_schema() -> None:
    assert bench.dispatched(AFTER, "kocoon") - bench.dispatched(BEFORE, "kocoon") == 120
    assert bench.dispatched(AFTER, "agent-sandbox") - bench.dispatched(BEFORE, "agent-sandbox") == 0
    assert bench.dispatched(AFTER, "nobody") == 0


def test_busiest_requests_are_the_largest_deltas() -> None:
    assert bench.busiest(BEFORE, AFTER, top=2) == ["GET pods 200: 40", "GET pods 404: 7"]


def test_webhook_mean_is_the_window_delta() -> None:
    # (4 + 1 - 1) s over (20 + 10 - 10) calls in the window: 200 ms.
    assert bench.webhook_means(BEFORE, AFTER) == {"default-sandbox.kocoon.io": 200.0}


def test_flow_schema_matches_only_the_controller_account() -> None:
    schema = bench.flow_schema("kocoon", "kocoon-system", "kocoon-operator")
    assert schema["metadata"]["name"] == "bench-kocoon"
    (rule,) = schema["spec"]["rules"]
    assert rule["subjects"] == [
        {
            "kind": "ServiceAccount",
            "serviceAccount": {"namespace": "kocoon-system", "name": "kocoon-operator"},
        }
    ]
    assert schema["spec"]["priorityLevelConfiguration"] == {"name": "workload-low"}
