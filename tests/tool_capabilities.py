"""Capabilities the end-to-end tool tests call, on the embedded bridge and over gRPC."""

from __future__ import annotations

from typing import Any

import anyio

from loom import capability

__all__ = ["always_fails", "get_weather", "get_weather_v2", "too_slow"]


@capability("weather.get", version="1.0")
def get_weather(city: str, units: str = "metric") -> dict[str, Any]:
    """Current weather of a city."""
    return {"city": city, "temp": 12 if units == "metric" else 54}


@capability("weather.get", version="2.0")
async def get_weather_v2(city: str) -> dict[str, Any]:
    return {"city": city, "temp": 12, "version": 2}


@capability("always.fails")
async def always_fails() -> None:
    raise ValueError("boom")


@capability("too.slow")
async def too_slow() -> None:
    await anyio.sleep_forever()
