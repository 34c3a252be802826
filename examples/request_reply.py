"""Request/reply: a requester asks, a responder answers on the requester's reply topic.

python examples/request_reply.py [--backend trio] [--address HOST:PORT]
"""

from __future__ import annotations

import sys
from pathlib import Path

# examples/trio.py would shadow the trio package for scripts run from this folder.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import os

import anyio

from loom import Agent, Context, Envelope


async def responder(ctx: Context, topic: str, event: Envelope) -> None:
    if event.type == "data.query":
        answer = event.payload.decode().upper()
        await ctx.reply(event, type="data.result", payload=answer.encode())


async def main(address: str) -> list[str]:
    answers: list[str] = []
    async with (
        Agent("responder", ["service.topic"], on_event=responder, address=address),
        Agent("requester", [], address=address) as requester,
    ):
        for question in ["ping", "hello", "loom"]:
            response = await requester.ctx.request(
                "service.topic", type="data.query", payload=question.encode(), timeout_ms=3000
            )
            print(f"{question!r} -> {response.payload.decode()!r} ({response.type})")
            answers.append(response.payload.decode())
    return answers


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("LOOM_BRIDGE_ADDR") or "embedded")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.address, backend=args.backend)


if __name__ == "__main__":
    cli()
