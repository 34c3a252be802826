"""The public API: what ``loom`` exports, its exception tree, and ``LOOM_LOG``."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest

import loom
import loom.errors

DOCUMENTED = {
    "Agent",
    "BridgeRejected",
    "Capability",
    "CapabilityError",
    "CapabilityNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "Context",
    "Envelope",
    "EventHandler",
    "InvalidArguments",
    "LoomError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RpcError",
    "ToolTimeout",
    "capability",
}
"""The names loom/__init__.py and README document as the public API."""

EXCEPTIONS = {
    "BridgeRejected",
    "CapabilityError",
    "CapabilityNotFound",
    "ConfigurationError",
    "ConnectionLost",
    "InvalidArguments",
    "LoomError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "RpcError",
    "ToolTimeout",
}


def test_all_is_exactly_the_documented_set() -> None:
    assert len(loom.__all__) == len(set(loom.__all__)), "duplicates in loom.__all__"
    assert set(loom.__all__) == DOCUMENTED


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_name_is_importable(name: str) -> None:
    module = importlib.import_module("loom")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from loom import {name}", namespace)
    assert namespace[name] is getattr(loom, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from loom import *", namespace)
    assert set(namespace) - {"__builtins__"} == DOCUMENTED


def test_exceptions_derive_from_loom_error() -> None:
    exported = {
        name
        for name in loom.__all__
        if inspect.isclass(getattr(loom, name)) and issubclass(getattr(loom, name), BaseException)
    }
    assert exported == EXCEPTIONS
    for name in exported:
        assert issubclass(getattr(loom, name), loom.LoomError), name
    # every exception class in loom.errors is public and part of the tree
    defined = {
        name
        for name, obj in vars(loom.errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == "loom.errors"
    }
    assert defined == EXCEPTIONS
    assert set(loom.errors.__all__) == EXCEPTIONS


def test_exception_tree_as_documented() -> None:
    assert issubclass(loom.ToolTimeout, loom.RequestTimeout)
    assert issubclass(loom.RequestTimeout, TimeoutError)
    assert issubclass(loom.ConnectionLost, ConnectionError)
    assert issubclass(loom.ConfigurationError, ValueError)
    for remote in (loom.CapabilityNotFound, loom.InvalidArguments, loom.CapabilityError):
        assert issubclass(remote, loom.RemoteError)
    error = loom.CapabilityError("CAPABILITY_ERROR", "ValueError: boom")
    assert (error.code, error.message) == ("CAPABILITY_ERROR", "ValueError: boom")
    too_large = loom.MessageTooLarge(10, 5)
    assert (too_large.size, too_large.limit) == (10, 5)


def run_python(code: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("LOOM_LOG", None)
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


PROBE = """
import logging
import loom
logger = logging.getLogger("loom")
print(logging.getLevelName(logger.getEffectiveLevel()))
logger.debug("probe from loom")
logging.getLogger("loom.bridge").debug("probe from loom.bridge")
logging.getLogger("other").warning("probe from another logger")
"""


def test_loom_log_debug_turns_on_debug_output_on_stderr() -> None:
    proc = run_python(PROBE, LOOM_LOG="debug")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DEBUG"
    lines = proc.stderr.splitlines()
    assert any("DEBUG" in line and "loom: probe from loom" in line for line in lines), lines
    assert any("DEBUG" in line and "loom.bridge: probe from loom.bridge" in line for line in lines)
    # only loom's logger is configured: another logger keeps Python's default format
    assert "probe from another logger" in proc.stderr
    assert not any("other: probe" in line and "WARNING" in line for line in lines)


def test_loom_log_debug_shows_loom_s_own_debug_messages() -> None:
    code = """
import anyio
import loom

async def main():
    async with loom.Agent("probe-agent", ["t"], address="embedded"):
        pass

anyio.run(main)
"""
    proc = run_python(code, LOOM_LOG="debug")
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr
    assert "registered probe-agent" in proc.stderr
    assert "agent probe-agent: started" in proc.stderr


def test_without_loom_log_import_is_silent() -> None:
    proc = run_python(PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "WARNING"
    assert "probe from loom" not in proc.stderr
    proc = run_python("import loom")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_import_loom_with_loom_log_debug() -> None:
    proc = run_python("import loom", LOOM_LOG="debug")
    assert proc.returncode == 0, proc.stderr
    proc = run_python(
        "import logging, loom; print(logging.getLogger('loom').handlers)", LOOM_LOG="debug"
    )
    assert "StreamHandler <stderr> (NOTSET)" in proc.stdout
