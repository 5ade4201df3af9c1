"""Shared fixtures. Blender-side helpers live in blender_support.py and are imported by the
tests that need bpy, so core tests never load Blender."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/blenders runs the add-on in other Blenders' venvs (make test-blenders names them);
# without them it is not collected at all, rather than skipped as if it had run.
collect_ignore = [] if os.environ.get("ARCHVIZ_BLENDER_VENVS") else ["blenders"]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # so tests can import their sibling support modules


@pytest.fixture(autouse=True)
def _archviz_home(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's ~/.cache/archviz unless it sets its own."""
    if "ARCHVIZ_HOME" not in os.environ:
        monkeypatch.setenv("ARCHVIZ_HOME", str(tmp_path_factory.getbasetemp() / "archviz_home"))


@pytest.fixture(scope="session")
def repos():
    """The fake hub's repositories (tests/fake_hub.py), built once per machine from the tiny models."""
    from backend_support import TEST_HOME
    from fake_hub import build_repos

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARCHVIZ_HOME", str(TEST_HOME))
        return build_repos(TEST_HOME / "fake-hub" / "v1")


# ------------------------------------------------------------------ the engine test modules
# A module that runs the engine in-process says `pytestmark = pytest.mark.usefixtures("home")`
# and takes `engine` where it needs one.


@pytest.fixture(scope="module")
def home():
    """The engine tests' home for one module: the shared tiny models and an offline, empty
    Hugging Face cache (backend_support.use_test_home), diffusers' and transformers' logging
    and progress bars off; torch's thread count is put back afterwards."""
    import torch
    from backend_support import quiet_test_home

    threads = torch.get_num_threads()
    with quiet_test_home():
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(home):
    """One CPU Engine per module (backend_support.cpu_engine: ARCHVIZ_TEST_THREADS threads, 1 by default)."""
    from backend_support import cpu_engine

    return cpu_engine()
