"""Command line: ``loom bridge [--address HOST:PORT]`` (also ``python -m loom bridge``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import ssl
import sys

import anyio

from loom.bridge._core import BridgeLimits

DEFAULT_ADDRESS = "127.0.0.1:50051"


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise SystemExit(f"loom: invalid address {address!r}; expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None:
        raise SystemExit("loom: --tls-key needs --tls-cert")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"loom: cannot load the TLS certificate {cert}: {exc}") from None
    context.set_alpn_protocols(["h2"])
    return context


async def _serve(host: str, port: int, limits: BridgeLimits, tls: ssl.SSLContext | None) -> None:
    from loom.bridge._server import BridgeServer

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with BridgeServer(host, port, limits=limits, ssl_context=tls) as server:
            print(f"loom bridge listening on {server.address}", flush=True)
            async for signum in signals:
                print(f"loom bridge: {signal.Signals(signum).name}, shutting down", flush=True)
                break


def _have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def main(argv: list[str] | None = None) -> int:
    from loom._logging import configure_from_env

    configure_from_env()
    parser = argparse.ArgumentParser(prog="loom", description="loom command line")
    commands = parser.add_subparsers(dest="command", required=True)
    bridge = commands.add_parser("bridge", help="run a bridge server")
    bridge.add_argument(
        "--address",
        default=os.environ.get("LOOM_BRIDGE_ADDR") or DEFAULT_ADDRESS,
        help="HOST:PORT to listen on (default: $LOOM_BRIDGE_ADDR or 127.0.0.1:50051)",
    )
    bridge.add_argument(
        "--max-message-bytes",
        type=int,
        default=BridgeLimits.max_message_bytes,
        help="largest message accepted from a client (default: %(default)s)",
    )
    bridge.add_argument(
        "--max-pending-calls",
        type=int,
        default=BridgeLimits.max_pending_calls,
        help="capability calls in flight before new ones are refused (default: %(default)s)",
    )
    bridge.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (grpcs://)")
    bridge.add_argument("--tls-key", help="PEM private key of --tls-cert")
    bridge.add_argument(
        "--no-uvloop",
        dest="uvloop",
        action="store_false",
        help="use the standard asyncio event loop even when uvloop is installed",
    )
    args = parser.parse_args(argv)
    host, port = split_address(args.address)
    tls = _tls_context(args.tls_cert, args.tls_key)
    limits = BridgeLimits(
        max_message_bytes=args.max_message_bytes, max_pending_calls=args.max_pending_calls
    )
    try:
        anyio.run(
            _serve,
            host,
            port,
            limits,
            tls,
            backend="asyncio",
            backend_options={"use_uvloop": args.uvloop and _have_uvloop()},
        )
    except OSError as exc:
        print(f"loom bridge: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
