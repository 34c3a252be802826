"""Agents talk to a `loom bridge --tls-cert/--tls-key` process over grpcs://, with a
certificate authority made for the test; a client that does not trust it is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from bridge_process import BridgeProcess

from loom import Agent, ConnectionLost, Context, Envelope

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_bridge(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    args = ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    with BridgeProcess(extra_args=args) as bridge:
        yield bridge


async def test_agents_exchange_events_and_tools_over_tls(
    tls_bridge: BridgeProcess,
    ca: trustme.CA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("LOOM_TLS_CA", str(ca_file))
    address = f"grpcs://{tls_bridge.address}"
    got = anyio.Event()
    seen: list[bytes] = []

    async def on_event(ctx: Context, topic: str, event: Envelope) -> None:
        seen.append(event.payload)
        got.set()
        if event.reply_to:
            await ctx.reply(event, type="pong", payload=event.payload)

    async with (
        Agent("tls-sub", ["secure.topic"], on_event=on_event, address=address),
        Agent("tls-pub", [], address=address) as pub,
    ):
        await pub.ctx.emit("secure.topic", type="t", payload=b"secret")
        with anyio.fail_after(10):
            await got.wait()
            reply = await pub.ctx.request("secure.topic", type="ping", payload=b"p")
    assert seen[0] == b"secret" and reply.payload == b"p"


async def test_an_untrusted_certificate_is_refused(
    tls_bridge: BridgeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("LOOM_TLS_CA", str(other))
    agent = Agent("tls-untrusted", [], address=f"grpcs://{tls_bridge.address}")
    with anyio.fail_after(10), pytest.raises(ConnectionLost):
        await agent.start()
