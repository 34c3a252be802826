"""Threads: an observer joins a conversation thread and sees every event in it,
whatever topic each was published on.

    python examples/threads.py [--backend trio] [--address HOST:PORT]
"""

from __future__ import annotations

import sys
from pathlib import Path

# examples/trio.py would shadow the trio package for scripts run from this folder.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import os
import uuid

import anyio

from loom import Agent, Context, Envelope


async def main(address: str) -> list[str]:
    thread_id = f"thread-{uuid.uuid4()}"
    seen: list[str] = []
    all_seen = anyio.Event()

    async def observer(ctx: Context, topic: str, event: Envelope) -> None:
        seen.append(f"{topic}: {event.payload.decode()}")
        if len(seen) == 3:
            all_seen.set()

    async with (
        Agent("observer", [], on_event=observer, address=address) as watcher,
        Agent("speaker", [], address=address) as speaker,
    ):
        await watcher.ctx.join_thread(thread_id)
        await speaker.ctx.emit("chat.general", type="message", payload=b"unrelated")
        for topic, text in [
            ("chat.general", "Hello"),
            ("chat.support", "Need help"),
            ("chat.general", "Bye"),
        ]:
            await speaker.ctx.emit(
                topic,
                type="message",
                payload=text.encode(),
                envelope=Envelope.new(
                    event_type="message", payload=text.encode(), thread_id=thread_id
                ),
            )
        with anyio.fail_after(5):
            await all_seen.wait()
    for line in seen:
        print(line)
    return seen


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("LOOM_BRIDGE_ADDR") or "embedded")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.address, backend=args.backend)


if __name__ == "__main__":
    cli()
