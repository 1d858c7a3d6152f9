"""The router's Prometheus metrics.

Labels stay low-cardinality: kind and outcome, never names, except the per-model series, which
carry the ModelDeployment's namespace and name: models are few, and an autoscaler (KEDA's
Prometheus scaler, an HPA on external metrics) needs the demand of each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUESTS_TOTAL = "kocoon_router_requests_total"
REQUEST_DURATION = "kocoon_router_request_duration_seconds"
AUTH_FAILURES_TOTAL = "kocoon_router_auth_failures_total"
HELD_REQUESTS = "kocoon_router_held_requests"
HOLD_DURATION = "kocoon_router_hold_duration_seconds"
WAKES_REQUESTED_TOTAL = "kocoon_router_wakes_requested_total"
LEASE_WRITES_TOTAL = "kocoon_router_lease_writes_total"
TARGETS = "kocoon_router_targets"
MODEL_IN_FLIGHT = "kocoon_router_model_in_flight"
MODEL_QUEUED = "kocoon_router_model_queued"
MODEL_REQUESTS_TOTAL = "kocoon_router_model_requests_total"
MODEL_TIME_TO_FIRST_BYTE = "kocoon_router_model_time_to_first_byte_seconds"

LABEL_KIND = "kind"
LABEL_CODE = "code"
LABEL_REASON = "reason"
LABEL_NAMESPACE = "namespace"
LABEL_MODEL = "model"

# Requests that stream for minutes are counted too; the long buckets keep them visible.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_HOLD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            REQUESTS_TOTAL, "Requests answered, by target kind and status code.",
            [LABEL_KIND, LABEL_CODE], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            REQUEST_DURATION, "Time from request to the end of the response, holds included.",
            [LABEL_KIND], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.auth_failures = Counter(
            AUTH_FAILURES_TOTAL, "Requests refused with 401, by reason.", [LABEL_REASON], registry=r
        )
        self.held = Gauge(HELD_REQUESTS, "Requests held while their target wakes.", registry=r)
        self.hold_duration = Histogram(
            HOLD_DURATION, "Time requests were held waiting for a wake.",
            buckets=_HOLD_BUCKETS, registry=r,
        )  # fmt: skip
        self.wakes = Counter(
            WAKES_REQUESTED_TOTAL, "Wake requests written, by target kind.", [LABEL_KIND],
            registry=r,
        )  # fmt: skip
        self.lease_writes = Counter(
            LEASE_WRITES_TOTAL, "Activity Lease renewals written.", registry=r
        )
        self.targets = Gauge(TARGETS, "Targets in the routing table, by kind.", [LABEL_KIND],
                             registry=r)  # fmt: skip
        model = [LABEL_NAMESPACE, LABEL_MODEL]
        self.model_in_flight = Gauge(
            MODEL_IN_FLIGHT, "Requests forwarded to a model's replicas and not finished.",
            model, registry=r,
        )  # fmt: skip
        self.model_queued = Gauge(
            MODEL_QUEUED, "Requests held for a model with no ready, awake replica.",
            model, registry=r,
        )  # fmt: skip
        self.model_requests = Counter(
            MODEL_REQUESTS_TOTAL, "Requests to a model answered, by status code (499: the "
            "client went away).", [*model, LABEL_CODE], registry=r,
        )  # fmt: skip
        self.model_ttfb = Histogram(
            MODEL_TIME_TO_FIRST_BYTE, "From the request's arrival to the first byte of the "
            "model's answer, holds included.", model, buckets=_TTFB_BUCKETS, registry=r,
        )  # fmt: skip
