"""Shared fixtures: every kernel test runs under each SIMD path this CPU supports and several
thread counts (results must be identical for all of them)."""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from hypothesis import settings

import embtab

# CI runs the property tests with a fixed seed (the same examples on every run, so a submission's
# result does not depend on luck); locally each run explores new examples.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SIMD_PATHS = embtab.available_simd_paths()
THREAD_COUNTS = [1, 2, 3, 8]


@pytest.fixture(params=SIMD_PATHS)
def simd_path(request: pytest.FixtureRequest) -> Iterator[str]:
    previous = embtab.simd_path()
    embtab.set_simd_path(request.param)
    try:
        yield request.param
    finally:
        embtab.set_simd_path(previous)


@pytest.fixture(params=THREAD_COUNTS)
def num_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = embtab.get_num_threads()
    embtab.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        embtab.set_num_threads(previous)


@pytest.fixture
def each_path_and_threads(simd_path: str, num_threads: int) -> tuple:
    """Use in a test to run it under every (SIMD path, thread count) pair."""
    return simd_path, num_threads


# Ray (embtab.distributed): one local instance for the whole session, started by the first test that
# asks for it and stopped at the end. A test that needs another cluster (tests/test_distributed_cluster.py)
# shuts it down; the next test asking for it starts it again.
@pytest.fixture(scope="session")
def _ray_session() -> Iterator[object]:
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session: object) -> object:
    ray = _ray_session
    if not ray.is_initialized():  # type: ignore[attr-defined]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # type: ignore[attr-defined]
    return ray
