"""Tool invocation: one agent provides ``weather.get``, another calls it by name.

    python examples/tools.py [--backend trio] [--address HOST:PORT]

The caller never learns who provides the capability: the bridge routes the call.
Arguments are validated against the capability's type hints before it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# examples/trio.py would shadow the trio package for scripts run from this folder.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os
from typing import Literal

import anyio

from loom import Agent, InvalidArguments, capability


@capability("weather.get", version="1.0")
def get_weather(city: str, units: Literal["metric", "imperial"] = "metric") -> dict[str, object]:
    """Current weather for a city."""
    temp_c = 10 + sum(map(ord, city)) % 15
    temp = temp_c if units == "metric" else round(temp_c * 9 / 5 + 32)
    return {"city": city, "temp": temp, "units": units}


async def main(address: str) -> dict[str, object]:
    async with (
        Agent("weather-service", [], capabilities=[get_weather], address=address),
        Agent("assistant", [], address=address) as assistant,
    ):
        raw = await assistant.ctx.tool(
            "weather.get", version="1.0", payload={"city": "Seattle", "units": "metric"}
        )
        result = json.loads(raw)
        print(f"Temperature in {result['city']}: {result['temp']}°C")
        try:
            await assistant.ctx.tool("weather.get", payload={"city": 42})
        except InvalidArguments as exc:
            print(f"Rejected bad arguments: {exc.message}")
    return dict(result)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=os.environ.get("LOOM_BRIDGE_ADDR") or "embedded")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    anyio.run(main, args.address, backend=args.backend)


if __name__ == "__main__":
    cli()
