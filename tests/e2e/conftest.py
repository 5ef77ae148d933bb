"""Fixtures for the hookd end-to-end suite.

`hookd` starts release binaries of hookd on 127.0.0.1, `receiver` starts HTTP
servers that record every webhook delivery, and `svix` is an official Svix SDK
client bound to a fresh hookd instance. The `*_module` variants live for one
test module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from svix.api import Svix

from support import HookdInstance, HookdPool, ReceiverPool

# hookd instances that are running for the current test, whatever their fixture scope.
_active_hookd: list[HookdInstance] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Attach the output of every running hookd instance to the report of a failed test."""
    report = yield
    if report.failed:
        for instance in _active_hookd:
            report.sections.append((f"hookd log {instance.log_path}", instance.read_log()))
    return report


@pytest.fixture
def hookd(tmp_path: Path) -> Iterator[HookdPool]:
    """Factory: `hookd(env=...)` starts a fresh hookd instance for this test.

    `env` overrides DEFAULT_HOOKD_ENV, for example {"HOOKD_RETRY_SCHEDULE": "1s,1s"};
    `instance.restart()` starts the same data directory again.
    """
    pool = HookdPool(tmp_path, _active_hookd)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def hookd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookdPool]:
    pool = HookdPool(tmp_path_factory.mktemp("hookd"), _active_hookd)
    yield pool
    pool.stop_all()


@pytest.fixture
def hookd_instance(hookd: HookdPool) -> HookdInstance:
    """A hookd instance with the default settings."""
    return hookd()


@pytest.fixture
def svix(hookd_instance: HookdInstance) -> Svix:
    """A Svix SDK client for the default hookd instance of the test."""
    return hookd_instance.client()


@pytest.fixture
def receiver() -> Iterator[ReceiverPool]:
    """Factory: `receiver(name, default=...)` starts a webhook receiver that records every request."""
    pool = ReceiverPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def receiver_module() -> Iterator[ReceiverPool]:
    pool = ReceiverPool()
    yield pool
    pool.stop_all()
