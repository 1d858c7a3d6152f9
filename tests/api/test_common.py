"""Durations, quantities, GPU slices and conditions: parsing, canonical forms, rejections."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from pydantic import TypeAdapter, ValidationError

from kocoon.api.common import (
    Condition,
    Duration,
    GpuSlice,
    PositiveDuration,
    PositiveQuantity,
    Quantity,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds", "canonical"),
    [
        ("5m", 300, "5m0s"),
        ("1h30m", 5400, "1h30m0s"),
        ("90s", 90, "1m30s"),
        ("1.5s", 1.5, "1.5s"),
        ("500ms", 0.5, "500ms"),
        ("250us", 0.00025, "250us"),
        ("0s", 0, "0s"),
        ("168h", 604800, "168h0m0s"),
    ],
)
def test_duration_parses_go_format(text: str, seconds: float, canonical: str) -> None:
    value = Duration.parse(text)
    assert value.total_seconds() == pytest.approx(seconds)
    assert str(value) == canonical
    assert Duration.parse(str(value)) == value


@pytest.mark.parametrize("text", ["5", "m", "-5m", "5 m", "5min", "1d", "", "10000h"])
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|maximum"):
        Duration.parse(text)


def test_positive_duration_rejects_zero() -> None:
    adapter = TypeAdapter(PositiveDuration)
    assert adapter.validate_python("10m") == timedelta(minutes=10)
    with pytest.raises(ValidationError, match="longer than zero"):
        adapter.validate_python("0s")


def test_duration_serialises_canonically() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.dump_python(adapter.validate_python("10m"), mode="json") == "10m0s"


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        ("10Gi", 10 * 1024**3, "10Gi"),
        ("1024Mi", 1024**3, "1Gi"),
        ("1536Mi", 1536 * 1024**2, "1536Mi"),
        ("1.5", Decimal("1.5"), "1500m"),
        ("500m", Decimal("0.5"), "500m"),
        ("1000", 1000, "1k"),
        ("2", 2, "2"),
        ("1e3", 1000, "1k"),
        ("0", 0, "0"),
    ],
)
def test_quantity_canonical(text: str, value: Decimal, canonical: str) -> None:
    quantity = Quantity(text)
    assert quantity.value == value
    assert str(quantity) == canonical


@pytest.mark.parametrize("text", ["-1Gi", "10GB", "ten", "1.2.3", "Gi", "10 Gi"])
def test_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        Quantity(text)


def test_positive_quantity() -> None:
    adapter = TypeAdapter(PositiveQuantity)
    assert adapter.validate_python(2) == "2"
    for bad in ("0", 0, "0Gi"):
        with pytest.raises(ValidationError, match="greater than zero"):
            adapter.validate_python(bad)
    with pytest.raises(ValidationError):
        adapter.validate_python(True)


@pytest.mark.parametrize(
    "raw",
    [
        {"mode": "wholeGPU"},
        {"mode": "mig", "profile": "1g.10gb"},
        {"mode": "timeSliced", "count": 2},
        {"mode": "hami", "memory": "8Gi", "cores": 30},
        {"mode": "dra", "deviceClassName": "gpu.nvidia.com"},
    ],
)
def test_gpu_slice_accepts(raw: dict[str, object]) -> None:
    assert GpuSlice.model_validate(raw).mode == raw["mode"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"mode": "mig"}, "profile"),
        ({"mode": "wholeGPU", "profile": "1g.10gb"}, "profile"),
        ({"mode": "timeSliced", "memory": "1Gi"}, "memory"),
        ({"mode": "hami"}, "memory"),
        ({"mode": "dra"}, "deviceClassName"),
        ({"mode": "wholeGPU", "count": 0}, "count"),
        ({"mode": "mps"}, "mode"),
        ({"mode": "mig", "profile": "big"}, "profile"),
    ],
)
def test_gpu_slice_rejects_naming_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        GpuSlice.model_validate(raw)


def test_condition_shape() -> None:
    condition = Condition.model_validate(
        {
            "type": "Ready",
            "status": "True",
            "reason": "PodReady",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        }
    )
    assert condition.to_wire()["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    with pytest.raises(ValidationError, match="reason"):
        Condition.model_validate({**condition.to_wire(), "reason": "not camel case"})
    with pytest.raises(ValidationError, match="status"):
        Condition.model_validate({**condition.to_wire(), "status": "Yes"})
