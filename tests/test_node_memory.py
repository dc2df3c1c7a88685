"""The node caps glibc's malloc arenas (flat memory under concurrent associations)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from monai_app.node.memory import limit_malloc_arenas

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt(M_ARENA_MAX) is glibc's")
def test_cap_is_set_on_glibc():
    # A fresh interpreter: the cap is process-wide and must not leak into other tests.
    code = "from monai_app.node.memory import limit_malloc_arenas as f; print(f())"
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "True"


def test_environment_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
