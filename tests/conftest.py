"""Shared fixtures."""

import pytest

QUICK_PREFIX = "test_quick_"


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """One results folder for the quick studies of the whole session.

    The end-to-end study tests run their quick configurations into it and the quick
    paper test then reuses every stored run (the studies resume), so no quick study is
    trained twice in one test session. Under pytest-xdist these tests form one group
    (see ``pytest_xdist_make_scheduler``), so they share one worker and one folder.
    """
    return tmp_path_factory.mktemp("quick_results")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks to group the tests
def pytest_collection_modifyitems(config, items):
    """Marks every test that uses ``quick_results`` as one xdist group; their names start with ``test_quick_``.

    The name is what the scheduler sees (see ``pytest_xdist_make_scheduler``), so a test that
    uses the folder under another name is refused here.
    """
    for item in items:
        if "quick_results" in getattr(item, "fixturenames", ()):
            if not item.name.startswith(QUICK_PREFIX):
                raise pytest.UsageError(f"{item.nodeid} uses quick_results: its name must start with {QUICK_PREFIX!r}")
            item.add_marker(pytest.mark.xdist_group("quick_results"))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` that keeps the ``quick_results`` tests on one worker, in file order.

    pytest-xdist 3.8 groups tests by an ``@group`` suffix it writes into ``item._nodeid``, which
    pytest 9 no longer reads (``nodeid`` comes from ``item._id``): the ``xdist_group`` marks
    alone then leave the quick studies spread over the workers, each with its own folder, and
    the quick paper test retrains half of them. The scheduler only sees node ids, so the
    group is recognised by the ``test_quick_`` name (enforced in ``pytest_collection_modifyitems``).
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class QuickResultsScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:  # xdist's own group suffix, where it works
                return super()._split_scope(nodeid)
            name = nodeid.split("::")[-1].split("[")[0]
            return "quick_results" if name.startswith(QUICK_PREFIX) else nodeid

    return QuickResultsScheduling(config, log)


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


@pytest.fixture(scope="module")
def x64_module():
    """float64 for one module, restoring the previous setting after it (modules that need it list it)."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
