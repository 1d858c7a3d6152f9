"""mTLS on the agent API, over real HTTPS on loopback against `kocoon agent` processes.

The agent requires client certificates from its client CA at the TLS handshake
(`--client-ca`); the bearer token is still required on every request; `--client-cn` adds
the certificate's common name to what must match. The operator's AgentCheckpointer presents
its certificate from KOCOON_AGENT_CLIENT_CERT_FILE and KOCOON_AGENT_CLIENT_KEY_FILE.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from agentkit import AgentHandle, agent_process
from pki import Authority, authority, client_certificate

from kocoon.agent import local as local_agent
from kocoon.agent.main import build_authenticators, parser
from kocoon.controllers.checkpoints import (
    AGENT_CA_FILE_ENV,
    AGENT_CLIENT_CERT_FILE_ENV,
    AGENT_CLIENT_KEY_FILE_ENV,
    AGENT_ENDPOINTS_ENV,
    AGENT_TOKEN_FILE_ENV,
    DEFAULT_DRIVER_ENV,
    AgentCheckpointer,
    CheckpointFailed,
    Target,
)

pytestmark = pytest.mark.unit

OPERATOR_CN = "kocoon-operator"


@dataclass
class Pki:
    client_ca: Authority
    other_ca: Authority
    directory: Path

    def issue(self, common_name: str = OPERATOR_CN, *, other: bool = False) -> tuple[Path, Path]:
        ca = self.other_ca if other else self.client_ca
        return client_certificate(ca, self.directory / "issued", common_name)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(
        authority(tmp_path / "pki", "kocoon-client-ca"),
        authority(tmp_path / "pki", "someone-elses-ca"),
        tmp_path / "pki",
    )


def client_context(agent_root: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    """Trusts the agent's serving certificate; presents `cert` if given."""
    context = local_agent.credentials(agent_root).client_context()
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(the step that failed or "ok", what it said): a raw TLS client, to see where a refusal
    happens and that no HTTP byte comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except ssl.SSLError as error:
            return "handshake", str(error)
        try:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            answer = tls.recv(200)
        except (ssl.SSLError, ConnectionError) as error:
            return "first read", str(error)
        finally:
            tls.close()
        return "ok", answer.decode(errors="replace")


@pytest.fixture
async def agent(tmp_path: Path, pki: Pki) -> AsyncIterator[AgentHandle]:
    root = tmp_path / "agent"
    good = pki.issue()
    async with agent_process(
        root,
        extra_args=["--client-ca", str(pki.client_ca.cert_file)],
        client_ssl=client_context(root, good),
    ) as handle:
        yield handle


def port_of(agent: AgentHandle) -> int:
    return int(urlsplit(agent.url).port or 0)


async def get(agent: AgentHandle, context: ssl.SSLContext, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(agent.url + "/v1/node", headers=headers) as response,
    ):
        return response.status


@pytest.mark.parametrize(
    "tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_only_certificates_from_the_client_ca_complete_the_handshake(
    agent: AgentHandle, pki: Pki, tmp_path: Path, tls_version: ssl.TLSVersion
) -> None:
    root = tmp_path / "agent"

    def context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = client_context(root, cert)
        ctx.minimum_version = ctx.maximum_version = tls_version
        return ctx

    port = port_of(agent)
    step, said = await asyncio.to_thread(handshake, port, context(pki.issue()))
    assert (step, said.split("\r\n")[0]) == ("ok", "HTTP/1.1 200 OK")

    refusals = {
        "no certificate": None,
        "another CA": pki.issue(other=True),
        "the operator's name, another CA": pki.issue(OPERATOR_CN, other=True),
    }
    for case, cert in refusals.items():
        step, said = await asyncio.to_thread(handshake, port, context(cert))
        # TLS 1.2 refuses within the handshake; a TLS 1.3 client finishes its side of the
        # handshake first and reads the server's refusal next. Either way the server never
        # answers HTTP.
        if tls_version == ssl.TLSVersion.TLSv1_2:
            assert step == "handshake", (case, step, said)
        else:
            # Refused: an error, or the connection closed, before any byte of an answer.
            assert step != "ok" or said == "", (case, step, said)
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            await get(agent, context(cert), agent.token)


async def test_the_bearer_token_is_still_required(
    agent: AgentHandle, pki: Pki, tmp_path: Path
) -> None:
    good = client_context(tmp_path / "agent", pki.issue())
    assert await get(agent, good, agent.token) == 200
    assert await get(agent, good, None) == 401
    assert await get(agent, good, agent.token + "x") == 401
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=good)) as session,
        session.get(agent.url + "/v1/checkpoints") as response,
    ):
        body = await response.json()
        assert (response.status, body["reason"]) == (401, "Unauthorized")
        assert "Bearer <operator token>" in body["message"]


async def test_allowed_common_names_are_checked_on_top_of_the_token(
    tmp_path: Path, pki: Pki
) -> None:
    root = tmp_path / "agent-cn"
    args = ["--client-ca", str(pki.client_ca.cert_file), "--client-cn", OPERATOR_CN]
    operator = client_context(root, pki.issue(OPERATOR_CN))
    async with agent_process(root, extra_args=args, client_ssl=operator) as agent:
        assert await get(agent, operator, agent.token) == 200
        assert await get(agent, operator, None) == 401
        intruder = client_context(root, pki.issue("some-workload"))
        assert await get(agent, intruder, agent.token) == 401
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=intruder)) as session,
            session.get(
                agent.url + "/v1/node", headers={"Authorization": f"Bearer {agent.token}"}
            ) as response,
        ):
            body = await response.json()
            assert f"common name must be one of {OPERATOR_CN}" in body["message"]


def test_a_common_name_without_a_client_ca_is_refused(tmp_path: Path) -> None:
    creds = local_agent.credentials(tmp_path)
    args = parser().parse_args(
        ["--tls-cert", str(creds.cert), "--tls-key", str(creds.key),
         "--token-file", str(creds.token_file), "--client-cn", OPERATOR_CN]
    )  # fmt: skip
    with pytest.raises(ValueError, match="--client-cn: needs --client-ca"):
        build_authenticators(args)


def operator_environment(
    monkeypatch: pytest.MonkeyPatch, agent: AgentHandle, root: Path, cert: tuple[Path, Path] | None
) -> None:
    creds = local_agent.credentials(root)
    monkeypatch.setenv(AGENT_ENDPOINTS_ENV, json.dumps({"*": agent.url}))
    monkeypatch.setenv(AGENT_TOKEN_FILE_ENV, str(creds.token_file))
    monkeypatch.setenv(AGENT_CA_FILE_ENV, str(creds.cert))
    monkeypatch.setenv(DEFAULT_DRIVER_ENV, "filesystem")
    if cert is None:
        monkeypatch.delenv(AGENT_CLIENT_CERT_FILE_ENV, raising=False)
        monkeypatch.delenv(AGENT_CLIENT_KEY_FILE_ENV, raising=False)
    else:
        monkeypatch.setenv(AGENT_CLIENT_CERT_FILE_ENV, str(cert[0]))
        monkeypatch.setenv(AGENT_CLIENT_KEY_FILE_ENV, str(cert[1]))


TARGET = Target(
    namespace="team-a", sandbox="s1", pod="s1-pod", node="test-node", container_id=None, pod_ip=None
)


async def test_the_operator_presents_its_client_certificate(
    agent: AgentHandle, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "agent"
    cert_file, key_file = pki.issue()
    # Where a mounted Secret would put them: the operator reads them again when they change.
    mounted = (tmp_path / "operator-tls" / "tls.crt", tmp_path / "operator-tls" / "tls.key")
    mounted[0].parent.mkdir()
    shutil.copy(cert_file, mounted[0])
    shutil.copy(key_file, mounted[1])
    operator_environment(monkeypatch, agent, root, mounted)
    checkpointer = AgentCheckpointer.from_environment()

    checkpoint = await checkpointer.checkpoint(TARGET, "s1-mtls")
    assert (checkpoint.id, checkpoint.driver, checkpoint.node) == (
        "s1-mtls",
        "filesystem",
        "test-node",
    )
    await checkpointer.restore(TARGET, checkpoint)

    # A renewal by another CA (a misconfigured issuer): the next call presents it and fails.
    other_cert, other_key = pki.issue(other=True)
    shutil.copy(other_cert, mounted[0])
    shutil.copy(other_key, mounted[1])
    os.utime(mounted[0], (1, 1))
    with pytest.raises(CheckpointFailed, match="unreachable"):
        await checkpointer.release("team-a", checkpoint)
    # Renewed again by the right CA: it works without a restart.
    shutil.copy(cert_file, mounted[0])
    shutil.copy(key_file, mounted[1])
    os.utime(mounted[0], (2, 2))
    await checkpointer.release("team-a", checkpoint)
    status, body = await agent.call("GET", "/v1/checkpoints/s1-mtls")
    assert (status, body["reason"]) == (404, "NotFound")

    # Without a client certificate the operator cannot reach the agent at all.
    operator_environment(monkeypatch, agent, root, None)
    bare = AgentCheckpointer.from_environment()
    with pytest.raises(CheckpointFailed, match="unreachable"):
        await bare.checkpoint(TARGET, "s1-bare")
    status, _ = await agent.call("GET", "/v1/checkpoints/s1-bare")
    assert status == 404


def test_the_operator_settings_are_checked_and_named(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, _ = pki.issue()
    monkeypatch.setenv(AGENT_CLIENT_CERT_FILE_ENV, str(cert_file))
    monkeypatch.delenv(AGENT_CLIENT_KEY_FILE_ENV, raising=False)
    with pytest.raises(
        ValueError, match=f"{AGENT_CLIENT_CERT_FILE_ENV}, {AGENT_CLIENT_KEY_FILE_ENV}: set both"
    ):
        AgentCheckpointer.from_environment()
    monkeypatch.setenv(AGENT_CLIENT_KEY_FILE_ENV, str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match=AGENT_CLIENT_KEY_FILE_ENV):
        AgentCheckpointer.from_environment()
    other_key = pki.issue(other=True)[1]
    monkeypatch.setenv(AGENT_CLIENT_KEY_FILE_ENV, str(other_key))
    with pytest.raises(ValueError, match="not a usable certificate and key"):
        AgentCheckpointer.from_environment()
