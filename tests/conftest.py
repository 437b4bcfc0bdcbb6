"""Shared test settings.

The real images live outside the repository, in ``../shared/data`` next to the clone (see its PROVENANCE.md).
``HDHKD_DATA_ROOT`` overrides that location. Tests that need them take the ``shared_data`` fixture, which skips
with a message naming the missing folder, so a user's clone without the data still runs everything else.
"""

import os
from pathlib import Path

import pytest
import torch

from hdhkd_monai.launcher import OFFLINE_TEACHER

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HDHKD_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))

#: The offline ImageNet backbone of the bundle's teacher (train.json), for tests that build one directly.
LITE = {"backbone": OFFLINE_TEACHER["target_backbone"], "weights": OFFLINE_TEACHER["target_weights"]}

# Two cores on CI, shared by the pytest-xdist workers (README's test command runs two): more threads than cores
# only adds contention. The processes the tests start (bundle runs, the wheel's demo, servers) get the same count
# through OMP_NUM_THREADS: with torch's default of one thread per core, each was two threads on the one core the
# other worker left, whose OpenMP threads wait for each other by spinning (the wheel and runner test files, run
# together: 202 s and 324 s of user CPU with the default, 149 s and 217 s with one thread each).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, torch.get_num_threads()) // _WORKERS)
torch.set_num_threads(_THREADS)
os.environ["OMP_NUM_THREADS"] = str(_THREADS)

#: The files whose module fixtures train and run bundles end to end, longest first (``--durations 0`` on an idle machine,
#: 2026-12-07: 129, 125, 79, 76 and 44 s of 641 s in all). pytest-xdist hands whole files to the two workers in
#: collection order (``--no-loadscope-reorder`` in pyproject.toml; by default it starts the files with most tests first,
#: which left a long one to start alone near the end), so these go first and the short files fill the gaps.
LONGEST_FIRST = ("test_share_deploy.py", "test_experiments_runner.py", "test_bundle_workflows.py", "test_install.py",
                 "test_anomalib_rows.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the others keep their order


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real evaluation images; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA} (set HDHKD_DATA_ROOT to point at it)")
    return SHARED_DATA


@pytest.fixture
def uninitialised_memory_is_nan():
    """Memory handed out by ``torch.empty`` and its kin holds NaN during the test (torch's deterministic mode fills
    it), so that a read of memory never written fails every run instead of now and then."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
