"""Three agents collaborate: planner -> researcher -> writer.

    python examples/trio.py                       # embedded bridge, asyncio
    python examples/trio.py --backend trio        # embedded bridge, trio
    python examples/trio.py --address 127.0.0.1:50051   # against `loom bridge`

The planner turns a user question into a research request, the researcher calls the
``research.search`` capability (a tool, routed by the bridge to whoever provides it),
and the writer prints the final answer.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named trio.py; keep it from shadowing the trio package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os

import anyio

from loom import Agent, Context, Envelope, capability


@capability("research.search", version="1.0")
def search(query: str, limit: int = 3) -> dict[str, list[str]]:
    """Find documents about a query."""
    slug = "-".join(query.lower().split())[:40] or "empty"
    return {"results": [f"https://example.com/{slug}/doc{i}" for i in range(1, limit + 1)]}


async def planner(ctx: Context, topic: str, event: Envelope) -> None:
    if event.type == "user.question":
        await ctx.emit(
            "topic.research",
            type="research.request",
            payload=event.payload,
            thread_id=event.thread_id,
        )


async def researcher(ctx: Context, topic: str, event: Envelope) -> None:
    if event.type == "research.request":
        found = await ctx.tool(
            "research.search", payload={"query": event.payload.decode(), "limit": 2}
        )
        draft = {"question": event.payload.decode(), **json.loads(found)}
        await ctx.emit(
            "topic.writer",
            type="writer.draft",
            payload=json.dumps(draft).encode(),
            thread_id=event.thread_id,
        )


def make_writer(done: anyio.Event, output: list[str]) -> object:
    async def writer(ctx: Context, topic: str, event: Envelope) -> None:
        if event.type == "writer.draft":
            draft = json.loads(event.payload)
            lines = [f"Q: {draft['question']}", *(f"  - {url}" for url in draft["results"])]
            output.append("\n".join([*lines, "SUMMARY: Complete"]))
            done.set()

    return writer


async def main(address: str, question: str) -> str:
    done = anyio.Event()
    output: list[str] = []
    agents = [
        Agent("planner", ["topic.planner"], on_event=planner, address=address),
        Agent(
            "researcher",
            ["topic.research"],
            capabilities=[search],
            on_event=researcher,
            address=address,
        ),
        Agent("writer", ["topic.writer"], on_event=make_writer(done, output), address=address),  # type: ignore[arg-type]
    ]
    async with agents[0], agents[1], agents[2]:
        await agents[0].ctx.emit(
            "topic.planner", type="user.question", payload=question.encode(), thread_id="demo-1"
        )
        with anyio.fail_after(10):
            await done.wait()
    print("Final output:")
    print(output[0])
    return output[0]


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("LOOM_BRIDGE_ADDR") or "embedded")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--question", default="What is structured concurrency?")
    args = parser.parse_args()
    anyio.run(main, args.address, args.question, backend=args.backend)


if __name__ == "__main__":
    cli()
