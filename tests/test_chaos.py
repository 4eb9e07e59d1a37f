"""The chaos suite (bench/chaos.py, `make chaos`) in CI: the seven faults during a smaller digest run
(1,000 subscribers, 421s for 30 s), each on private PostgreSQL and Redis servers of its own, real worker
and beat processes with the shipped settings, and a real SMTP sink. Every fault: no reader without a
mail, none with two; a SIGKILLed worker's run settles within 90 s."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import need_server

pytestmark = pytest.mark.slow
CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
SUBSCRIBERS = 1000


def harness():
    spec = importlib.util.spec_from_file_location("chaos", CHAOS)
    assert spec and spec.loader
    module = sys.modules.get("chaos") or importlib.util.module_from_spec(spec)
    if "chaos" not in sys.modules:
        sys.modules["chaos"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


def missing() -> str | None:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "PostgreSQL's initdb and pg_ctl"
    if shutil.which("redis-server") is None:
        return "redis-server"
    if os.geteuid() != 0:
        return "root (to run PostgreSQL as its user and mount a small tmpfs)"
    return None


@pytest.fixture(scope="module")
def table():
    need_server("the chaos suite's tools", missing())
    results = harness().main(["--subscribers", str(SUBSCRIBERS), "--refuse-seconds", "30"])
    return {int(result.fault.split(".")[0]): result for result in results}


@pytest.mark.parametrize("fault", range(1, 8))
def test_fault_loses_and_duplicates_nothing(table, fault):
    result = table[fault]
    assert result.settle is not None, f"{result.fault}: {result.note}"
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.mails == result.distinct == SUBSCRIBERS


def test_a_killed_worker_settles_within_90_seconds_with_the_defaults(table):
    assert table[1].settle is not None and table[1].settle <= 90


def test_the_ambiguous_case_is_counted(table):
    assert "answers lost after the dot" in table[5].note
