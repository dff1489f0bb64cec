"""The command's choice of memory allocator: which library, the one re-execution, and what is really loaded."""

import os
import subprocess
import sys

import pytest

from slingshot import allocator


@pytest.fixture
def libs(tmp_path, monkeypatch):
    """A fake library folder searched first; nothing else is found."""
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)

    def add(name):
        (tmp_path / name).write_bytes(b"\x7fELF")
        return str(tmp_path / name)

    return add


def test_auto_prefers_tcmalloc_then_jemalloc_then_the_system(libs):
    assert allocator.choose("auto") is None
    jemalloc = libs("libjemalloc.so.2")
    assert allocator.choose("auto") == jemalloc
    tcmalloc = libs("libtcmalloc_minimal.so.4")
    assert allocator.choose("auto") == tcmalloc
    assert allocator.choose("") == tcmalloc
    assert allocator.choose("jemalloc") == jemalloc
    assert allocator.choose("system") is None
    assert allocator.choose(jemalloc) == jemalloc
    assert allocator.choose("/no/such/libfoo.so") is None


@pytest.fixture
def execve(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    for name in ("LD_PRELOAD", allocator.ENV, allocator.ACTIVE_ENV):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_relaunch_execs_once_with_the_library_preloaded(libs, execve, monkeypatch):
    library = libs("libtcmalloc_minimal.so.4")
    allocator.relaunch_under_allocator(["slingshot", "train", "r.yaml", "--set", "train.lr=1e-4"])
    [(path, argv, env)] = execve
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "slingshot", "train", "r.yaml", "--set", "train.lr=1e-4"]
    assert env["LD_PRELOAD"] == library and env[allocator.ACTIVE_ENV] == library

    # the re-executed process: no second exec, and LD_PRELOAD is gone again for the programs it starts
    monkeypatch.setenv("LD_PRELOAD", f"{library} /opt/other.so")
    monkeypatch.setenv(allocator.ACTIVE_ENV, library)
    allocator.relaunch_under_allocator(["slingshot", "train"])
    assert len(execve) == 1
    assert os.environ["LD_PRELOAD"] == "/opt/other.so"
    assert allocator.ACTIVE_ENV not in os.environ


def test_relaunch_keeps_a_users_preload_and_respects_system(libs, execve, monkeypatch, capsys):
    libs("libjemalloc.so.2")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc.so.4")
    allocator.relaunch_under_allocator(["slingshot"])
    monkeypatch.setenv("LD_PRELOAD", "/opt/hook.so")
    monkeypatch.setenv(allocator.ENV, "system")
    allocator.relaunch_under_allocator(["slingshot"])
    assert execve == []
    monkeypatch.setenv(allocator.ENV, "tcmalloc")  # asked for by name but not installed: a warning, no exec
    allocator.relaunch_under_allocator(["slingshot"])
    assert execve == []
    assert "SLINGSHOT_MALLOC=tcmalloc: no such allocator library found" in capsys.readouterr().err
    monkeypatch.setenv(allocator.ENV, "auto")
    allocator.relaunch_under_allocator(["slingshot"])
    assert execve[0][2]["LD_PRELOAD"].endswith("libjemalloc.so.2 /opt/hook.so")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
@pytest.mark.parametrize("kind", ["tcmalloc", "jemalloc"])
def test_the_command_really_runs_under_the_allocator(kind):
    library = allocator.find_library(kind)
    if library is None:
        pytest.skip(f"{kind} is not installed here (apt install libtcmalloc-minimal4 libjemalloc2)")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ACTIVE_ENV)}
    env[allocator.ENV] = kind
    done = subprocess.run([sys.executable, "-m", "slingshot", "--version"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"(memory allocator: {kind})" in done.stdout
    env[allocator.ENV] = "system"
    done = subprocess.run([sys.executable, "-m", "slingshot", "--version"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "(memory allocator: system)" in done.stdout
