"""Types shared by every kind: the model base, durations, quantities, GPU slices, conditions.

Durations and quantities are written the way Kubernetes writes them (`5m`, `1h30m`, `10Gi`,
`500m`), parsed into values here, and serialised back in their canonical form.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


class KocoonModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python, no unknown fields.

    Attribute docstrings become field descriptions, and so the text of the CRDs and the API docs.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server expects it (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry; `field_path` makes errors name the right field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def immutable(field: str) -> JsonDict:
    """A transition rule that keeps an optional field from being set, changed or removed."""
    return cel(
        f"has(self.{field}) == has(oldSelf.{field})"
        f" && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        f"{field} is immutable: delete and recreate the object to change it",
        f".{field}",
    )


def list_map(*keys: str) -> JsonDict:
    """Schema markers for a list that is really a map keyed by `keys` (merge-friendly for SSA)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


# --- durations ------------------------------------------------------------------------------

_DURATION_UNITS: dict[str, Decimal] = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
# Longer than anything a session or a scale-down delay needs; catches unit mistakes (`10000h`).
MAX_DURATION = timedelta(days=366)


class Duration(timedelta):
    """A Go/Kubernetes duration such as `30s`, `10m`, `1h30m`: a `timedelta` in Python.

    Serialised in Go's canonical form (`10m0s`, `1h30m0s`), as `metav1.Duration` does.
    """

    @classmethod
    def parse(cls, text: str) -> Duration:
        if not re.fullmatch(DURATION_PATTERN, text):
            raise ValueError(
                f"{text!r} is not a duration: write a number and a unit, e.g. 30s, 10m or 1h30m"
            )
        seconds = sum(
            (Decimal(number) * _DURATION_UNITS[unit])
            for number, unit in _DURATION_PART.findall(text)
        )
        value = cls(seconds=float(seconds))
        if value > MAX_DURATION:
            raise ValueError(f"{text!r} is longer than the maximum of 8784h (366 days)")
        return value

    def __str__(self) -> str:
        micros = (self.days * 86400 + self.seconds) * 1_000_000 + self.microseconds
        if micros == 0:
            return "0s"
        if micros < 1_000_000:
            return f"{_trim(Decimal(micros) / 1000)}ms" if micros >= 1000 else f"{micros}us"
        hours, rest = divmod(micros, 3_600_000_000)
        minutes, rest = divmod(rest, 60_000_000)
        text = f"{_trim(Decimal(rest) / 1_000_000)}s"
        if hours or minutes:
            text = f"{minutes}m{text}"
        if hours:
            text = f"{hours}h{text}"
        return text

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_duration,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 64,
            "x-kubernetes-validations": [
                # Guarded so that a malformed value reports only the pattern, not a CEL error.
                cel(
                    f"!self.matches(r'{DURATION_PATTERN}') || duration(self) <= duration('8784h')",
                    "must be at most 8784h (366 days)",
                )
            ],
        }


def _validate_duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, timedelta):
        return Duration(seconds=value.total_seconds())
    if not isinstance(value, str):
        raise PydanticCustomError(
            "duration_type", "a duration is a string such as 30s, 10m or 1h30m"
        )
    try:
        return Duration.parse(value)
    except ValueError as error:
        raise PydanticCustomError("duration", str(error)) from None


def _trim(number: Decimal) -> str:
    return format(number.normalize(), "f")


# --- quantities -----------------------------------------------------------------------------

_BINARY_SUFFIXES: dict[str, int] = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES: dict[str, int] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
# Non-negative quantities only: a negative size or CPU count is never meaningful here.
QUANTITY_PATTERN = (
    r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
    r"([KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)


class Quantity(str):
    """A Kubernetes resource quantity (`10Gi`, `500m`, `2`), kept in canonical form.

    `value` is the exact number (bytes, cores, ...). Canonical form follows Kubernetes: binary
    suffixes stay binary (`1024Mi` → `1Gi`), decimal ones use the largest exact SI suffix
    (`1.5` → `1500m`, `1000` → `1k`).
    """

    value: Decimal

    def __new__(cls, text: str) -> Quantity:
        value, binary = _parse_quantity(text)
        instance = super().__new__(cls, _canonical_quantity(value, binary))
        instance.value = value
        return instance

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_quantity,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The same shape as Kubernetes' own resource quantities: `cpu: 2` and `cpu: "2"` both work.
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }


def _parse_quantity(text: str) -> tuple[Decimal, bool]:
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a quantity: write a number with an optional suffix,"
            " e.g. 10Gi, 512Mi, 500m or 2"
        )
    number, suffix = match.group(1), match.group(3) or ""
    try:
        mantissa = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a quantity") from None
    if suffix in _BINARY_SUFFIXES:
        return mantissa * (Decimal(1024) ** _BINARY_SUFFIXES[suffix]), True
    if suffix[:1] in {"e", "E"}:
        return mantissa.scaleb(int(suffix[1:])), False
    return mantissa.scaleb(_DECIMAL_SUFFIXES[suffix]), False


def _canonical_quantity(value: Decimal, binary: bool) -> str:
    if value == 0:
        return "0"
    if binary and value == value.to_integral_value():
        for suffix, power in sorted(_BINARY_SUFFIXES.items(), key=lambda item: -item[1]):
            mantissa = value / (Decimal(1024) ** power)
            if mantissa == mantissa.to_integral_value():
                return f"{int(mantissa)}{suffix}"
        return str(int(value))
    for suffix, exponent in sorted(_DECIMAL_SUFFIXES.items(), key=lambda item: -item[1]):
        mantissa = value.scaleb(-exponent)
        if mantissa == mantissa.to_integral_value():
            return f"{int(mantissa)}{suffix}"
    # Finer than a nano-unit: Kubernetes rounds up to the next nano-unit.
    return f"{int(value.scaleb(9).to_integral_value(rounding='ROUND_CEILING'))}n"


def _validate_quantity(value: Any) -> Quantity:
    if isinstance(value, Quantity):
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError(
            "quantity_type", "a quantity is a string or integer such as 10Gi, 500m or 2"
        )
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError("quantity", "must not be negative")
    try:
        return Quantity(str(value))
    except ValueError as error:
        raise PydanticCustomError("quantity", str(error)) from None


def _positive_quantity(value: Quantity) -> Quantity:
    if value.value <= 0:
        raise ValueError(f"must be greater than zero, got {value}")
    return value


def _positive_quantity_schema(schema: JsonDict) -> None:
    _add_rule(
        schema,
        cel(
            "!isQuantity(string(self)) || quantity(string(self)).isGreaterThan(quantity('0'))",
            "must be greater than zero",
        ),
    )


def _add_rule(schema: JsonDict, rule: JsonDict) -> None:
    rules = schema.setdefault("x-kubernetes-validations", [])
    assert isinstance(rules, list)
    rules.append(rule)


PositiveQuantity = Annotated[
    Quantity,
    AfterValidator(_positive_quantity),
    Field(json_schema_extra=_positive_quantity_schema),
]


def _positive_duration_schema(schema: JsonDict) -> None:
    _add_rule(
        schema,
        cel(
            f"!self.matches(r'{DURATION_PATTERN}') || duration(self) > duration('0s')",
            "must be longer than zero",
        ),
    )


def _require_positive_duration(value: Duration) -> Duration:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero, e.g. 30s or 10m")
    return value


PositiveDuration = Annotated[
    Duration,
    AfterValidator(_require_positive_duration),
    Field(json_schema_extra=_positive_duration_schema),
]


# --- names ----------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]


class LocalObjectReference(KocoonModel):
    """A reference to an object in the same namespace."""

    name: DnsSubdomain
    """Name of the referenced object."""


class SecretKeyReference(KocoonModel):
    """A key of a Secret in the same namespace."""

    name: DnsSubdomain
    """Name of the Secret."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key within the Secret."""


# --- GPU slices -----------------------------------------------------------------------------

GpuMode = Literal["wholeGPU", "mig", "timeSliced", "hami", "dra"]
MIG_PROFILE_PATTERN = r"^[1-7]g\.[0-9]+gb$"


class GpuSlice(KocoonModel):
    """A slice of GPU for one pod, mapped to what the cluster offers.

    `wholeGPU` requests `nvidia.com/gpu`; `mig` requests `nvidia.com/mig-<profile>` (mixed
    strategy); `timeSliced` requests `nvidia.com/gpu.shared`; `hami` requests HAMi's
    `nvidia.com/gpumem` and `nvidia.com/gpucores`; `dra` creates a ResourceClaimTemplate against
    `deviceClassName`. The modes a cluster offers are set in the operator's configuration.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode == 'mig' ? has(self.profile) : !has(self.profile)",
                    "profile is required for mode mig (e.g. 1g.10gb) and only allowed there",
                    ".profile",
                ),
                cel(
                    "self.mode == 'hami' || (!has(self.memory) && !has(self.cores))",
                    "memory and cores are only allowed with mode hami",
                    ".memory",
                ),
                cel(
                    "self.mode == 'hami' ? has(self.memory) : true",
                    "memory is required for mode hami (e.g. 8Gi)",
                    ".memory",
                ),
                cel(
                    "self.mode == 'dra' ? has(self.deviceClassName) : !has(self.deviceClassName)",
                    "deviceClassName is required for mode dra and only allowed there",
                    ".deviceClassName",
                ),
            ]
        }
    )

    mode: GpuMode
    """How the GPU is shared: wholeGPU, mig, timeSliced, hami or dra."""
    count: Annotated[int, Field(ge=1, le=16)] = 1
    """Number of devices (GPUs, MIG instances, time slices or DRA devices) for the pod."""
    profile: Annotated[str, Field(pattern=MIG_PROFILE_PATTERN, max_length=16)] | None = None
    """MIG profile, e.g. `1g.10gb` or `3g.40gb`. Required for mode mig."""
    memory: PositiveQuantity | None = None
    """GPU memory for mode hami, e.g. `8Gi` (rounded to MiB)."""
    cores: Annotated[int, Field(ge=1, le=100)] | None = None
    """Percentage of the GPU's compute for mode hami (1-100)."""
    device_class_name: DnsSubdomain | None = None
    """DeviceClass to claim devices from for mode dra, e.g. `gpu.nvidia.com`."""

    @model_validator(mode="after")
    def _fields_fit_mode(self) -> GpuSlice:
        if (self.mode == "mig") != (self.profile is not None):
            raise ValueError("gpu.profile is required for mode mig (e.g. 1g.10gb) and only there")
        if self.mode != "hami" and (self.memory is not None or self.cores is not None):
            raise ValueError("gpu.memory and gpu.cores are only allowed with mode hami")
        if self.mode == "hami" and self.memory is None:
            raise ValueError("gpu.memory is required for mode hami (e.g. 8Gi)")
        if (self.mode == "dra") != (self.device_class_name is not None):
            raise ValueError("gpu.deviceClassName is required for mode dra and only there")
        return self


# --- conditions -----------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(KocoonModel):
    """One aspect of the object's current state, shaped like `metav1.Condition`."""

    type: Annotated[str, Field(pattern=CONDITION_TYPE_PATTERN, max_length=316)]
    """Type of condition in CamelCase, e.g. Ready, Hibernated, CheckpointAvailable."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    reason: Annotated[str, Field(pattern=REASON_PATTERN, min_length=1, max_length=1024)]
    """Why the condition has this status, in CamelCase, e.g. IdleTimeout."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details about the transition."""
    last_transition_time: datetime
    """When the condition last changed status."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` this condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(max_length=32, json_schema_extra=list_map("type")),
]


class ObjectMeta(KocoonModel):
    """The part of `metadata` Kocoon reads. Other metadata fields pass through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    """Name of the object."""
    namespace: str | None = None
    """Namespace of the object."""
    generation: int | None = None
    """Generation of the spec, incremented by the API server."""
    labels: dict[str, str] | None = None
    """Labels of the object."""
    annotations: dict[str, str] | None = None
    """Annotations of the object."""
