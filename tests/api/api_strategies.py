"""Hypothesis strategies for specs: mostly plausible values, with invalid ones mixed in."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
DURATIONS = st.one_of(
    st.sampled_from(["10m", "1h30m", "1.5s", "500ms", "0s", "5", "-1m", "9000h", "1d", ""]),
    st.integers(min_value=-5, max_value=5),
)
QUANTITIES = st.one_of(
    st.sampled_from(["1Gi", "512Mi", "0", "-1Gi", "10GB", "1.5", "2e3", "Gi", ""]),
    st.integers(min_value=-2, max_value=4),
)
RUNTIME_CLASSES = st.sampled_from(["kata", "runc", "kata-qemu-nvidia-gpu", "gvisor", "Bad_Name"])
GPUS = st.one_of(
    st.fixed_dictionaries(
        {"mode": st.sampled_from(["wholeGPU", "timeSliced", "dra", "hami", "mps"])},
        optional={"count": st.integers(min_value=-1, max_value=20)},
    ),
    st.fixed_dictionaries(
        {"mode": st.just("mig")},
        optional={"profile": st.sampled_from(["1g.10gb", "3g.40gb", "big"])},
    ),
    st.fixed_dictionaries(
        {"mode": st.just("hami")},
        optional={"memory": QUANTITIES, "cores": st.integers(min_value=0, max_value=120)},
    ),
)
PORTS = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["http", "grpc", "Bad Name"]),
            "containerPort": st.integers(min_value=0, max_value=70000),
        }
    ),
    max_size=2,
)
TEMPLATES = st.fixed_dictionaries(
    {"image": st.sampled_from(["busybox", "python:3.12", "", "has space"])},
    optional={
        "command": st.lists(TEXT, max_size=3),
        "ports": PORTS,
        "resources": st.fixed_dictionaries(
            {}, optional={"limits": st.fixed_dictionaries({}, optional={"memory": QUANTITIES})}
        ),
        "securityContext": st.fixed_dictionaries(
            {}, optional={"runAsUser": st.integers(min_value=-1, max_value=2000)}
        ),
        "unknownField": TEXT,
    },
)
SANDBOX_SPECS = st.fixed_dictionaries(
    {"template": TEMPLATES},
    optional={
        "runtimeClassName": RUNTIME_CLASSES,
        "idleTimeout": DURATIONS,
        "hibernation": st.sampled_from(["memory", "filesystem", "none", "disk"]),
        "operatingMode": st.sampled_from(["Auto", "Running", "Hibernated", "Suspended"]),
        "shutdownPolicy": st.sampled_from(["Delete", "Retain", "Keep"]),
        "workspace": st.fixed_dictionaries({"size": QUANTITIES}),
        "gpu": GPUS,
        "network": st.fixed_dictionaries(
            {},
            optional={
                "exposedPorts": st.lists(st.sampled_from(["http", "grpc"]), max_size=2),
                "egress": st.fixed_dictionaries(
                    {
                        "allow": st.lists(
                            st.one_of(
                                st.fixed_dictionaries(
                                    {"cidr": st.sampled_from(["10.0.0.0/8", "x"])}
                                ),
                                st.fixed_dictionaries(
                                    {"host": st.sampled_from(["a.example", "-"])}
                                ),
                            ),
                            max_size=2,
                        )
                    }
                ),
            },
        ),
    },
)
MODEL_SPECS = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries({"uri": st.sampled_from(["hf://o/m", "s3://b/p", "x"])}),
        "engine": st.fixed_dictionaries({"type": st.sampled_from(["vllm", "trtllm", "ollama"])}),
    },
    optional={
        "gpu": GPUS,
        "replicas": st.integers(min_value=-1, max_value=4),
        "scaling": st.fixed_dictionaries(
            {},
            optional={
                "minReplicas": st.integers(min_value=-1, max_value=3),
                "maxReplicas": st.integers(min_value=0, max_value=3),
                "scaleDownDelay": DURATIONS,
            },
        ),
        "wakeStrategy": st.sampled_from(["engineSleep", "checkpoint", "coldStart", "warm"]),
        "cache": st.fixed_dictionaries({"size": QUANTITIES}),
    },
)


def session_specs() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "owner": st.fixed_dictionaries({"user": st.sampled_from(["alice", "", "bob@x.io"])}),
            "sandboxTemplate": SANDBOX_SPECS,
        },
        optional={
            "idleTimeout": DURATIONS,
            "maxLifetime": DURATIONS,
            "hibernation": st.sampled_from(["memory", "filesystem", "none"]),
            "models": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["m", "n"])}), max_size=2
            ),
        },
    )
