import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import gm  # noqa: E402


@pytest.fixture
def mock_llm():
    with gm.MockLLM() as m:
        yield m


def pytest_report_header(config):
    return [f"nginx: {gm.NGINX}", f"module: {gm.MODULE}", f"lua: {gm.HAVE_LUA}"]
