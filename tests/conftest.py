import pytest

# The harness is the gmharness package (scripts/gmharness), installed into the venv by
# scripts/setup; pytest finds the test modules of this directory by itself.
import gmharness as gm


@pytest.fixture
def mock_llm():
    with gm.MockLLM() as m:
        yield m


def pytest_report_header(config):
    return [f"nginx: {gm.NGINX}", f"module: {gm.env.MODULE}", f"lua: {gm.HAVE_LUA}"]
