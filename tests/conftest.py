"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def quick_results(tmp_path_factory):
    """One results folder for the quick studies of the whole session.

    The end-to-end study tests run their quick configurations into it and the quick
    paper test then reuses every stored run (the studies resume), so no quick study is
    trained twice in one test session.
    """
    return tmp_path_factory.mktemp("quick_results")
