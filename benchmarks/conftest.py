"""Benchmark options, fixtures and the results table.

``pytest benchmarks/`` runs the full suite; ``--quick`` runs tiny counts (a smoke test
of the harness); ``--results PATH`` writes the JSON somewhere other than
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._config import FULL, QUICK, Counts, backends
from benchmarks._measure import Baselines
from benchmarks._report import Recorder, Row, format_table, write_json

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

_ROWS = pytest.StashKey[list[Row]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loom benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="run every benchmark with tiny counts (seconds, not minutes): checks the harness",
    )
    group.addoption(
        "--results",
        default=None,
        metavar="PATH",
        help=f"write the results as JSON to PATH (default: {DEFAULT_RESULTS})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = []


def _results_path(config: pytest.Config) -> Path:
    option = config.getoption("--results")
    if option is None:
        return DEFAULT_RESULTS
    return config.invocation_params.dir / str(option)


@pytest.fixture(scope="session")
def counts(pytestconfig: pytest.Config) -> Counts:
    return QUICK if pytestconfig.getoption("--quick") else FULL


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest) -> str:
    """The anyio backend the loom side runs on."""
    return str(request.param)


@pytest.fixture(scope="session")
def record(pytestconfig: pytest.Config) -> Recorder:
    return Recorder(pytestconfig.stash[_ROWS])


@pytest.fixture(scope="session")
def baselines() -> Baselines:
    return Baselines()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loom-bench")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rows = session.config.stash.get(_ROWS, [])
    if rows:
        write_json(rows, _results_path(session.config))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    terminalreporter.section("loom benchmarks")
    for line in format_table(rows).splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"\nwritten to {_results_path(config)}")
