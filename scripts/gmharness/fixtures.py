"""pytest fixtures of the harness (imported by test modules, not by the scripts)."""

import atexit
import os
import shutil
import tempfile
import time

import pytest

from . import env
from .wait import wait_for

_PRIVATE_MODULE = None


def private_module_copy():
    """A snapshot of env.MODULE private to this test process. scripts/build overwrites the .so in
    place (`cp -f` keeps the inode), which crashes every nginx that has it mapped; tests running
    against a snapshot are immune to a rebuild happening at the same time."""
    global _PRIVATE_MODULE
    if _PRIVATE_MODULE is None:
        module = env.MODULE
        d = tempfile.mkdtemp(prefix="gm-module-")
        os.chmod(d, 0o755)
        dst = os.path.join(d, os.path.basename(module))
        wait_for(lambda: os.path.exists(module), bool, timeout=300, interval=1,
                 what=f"{module} (being built?)")
        for _ in range(20):  # until the copy is not torn by a concurrent build
            shutil.copyfile(module, dst)
            with open(module, "rb") as a, open(dst, "rb") as b:
                if a.read() == b.read():
                    break
            time.sleep(0.5)
        os.chmod(dst, 0o755)
        atexit.register(shutil.rmtree, d, True)
        _PRIVATE_MODULE = dst
    return _PRIVATE_MODULE


@pytest.fixture(autouse=True)
def private_module(monkeypatch):
    """Import this into a test module to run its nginx instances on a private_module_copy()."""
    monkeypatch.setattr(env, "MODULE", private_module_copy())
    yield
