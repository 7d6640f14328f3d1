"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """One results folder for the quick studies of the whole session.

    The end-to-end study tests run their quick configurations into it and the quick
    paper test then reuses every stored run (the studies resume), so no quick study is
    trained twice in one test session. Under pytest-xdist these tests form one group
    (see ``pytest_collection_modifyitems``), so they share one worker and one folder.
    """
    return tmp_path_factory.mktemp("quick_results")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks to group the tests
def pytest_collection_modifyitems(config, items):
    """Keeps every test that uses ``quick_results`` on one xdist worker, in file order."""
    for item in items:
        if "quick_results" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("quick_results"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops JAX's compiled-program caches after each test module.

    One long pytest process otherwise keeps every executable of ~450 tests alive; releasing
    them per module bounds the memory of the run (a full run once crashed inside XLA's
    compiler late in the session without this).
    """
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(autouse=True)
def _close_figures():
    """Closes the matplotlib figures a test drew (study figures are returned, not saved, in most tests)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
