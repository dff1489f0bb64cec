"""Run the `slingshot` command under tcmalloc or jemalloc when one is installed (Linux).

Training with batches of many shapes fragments glibc's heap: freed blocks that glibc cannot hand back make up a
third of peak RSS (see README, "Peak RSS"). tcmalloc and jemalloc keep size-class pools and return memory, and
PyTorch's own CPU tuning guide recommends them for speed too. The allocator must be chosen before the process
starts, so the console script re-executes itself once with LD_PRELOAD set, before anything heavy is imported.

`SLINGSHOT_MALLOC` chooses: `auto` (the default: tcmalloc, then jemalloc, then the system's), `system`,
`tcmalloc`, `jemalloc`, or the path of an allocator library. Library code (`import slingshot`) never does this;
only the command does.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

ENV = "SLINGSHOT_MALLOC"
ACTIVE_ENV = "SLINGSHOT_MALLOC_ACTIVE"  # set in the re-executed process: which library it runs under
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
FIND_NAMES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
_active: str | None = None  # the library this process was re-executed under


def search_dirs() -> list[Path]:
    """Where distributions and environments put shared libraries: the environment's own lib first."""
    machine = os.uname().machine
    dirs = [Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib", Path(f"/usr/lib/{machine}-linux-gnu"),
            Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib"), Path("/usr/local/lib64")]
    return list(dict.fromkeys(dirs))


def find_library(kind: str) -> str | None:
    """The path (or loader name) of an installed tcmalloc or jemalloc, or None."""
    for directory in search_dirs():
        for name in LIBRARIES[kind]:
            if (directory / name).is_file():
                return str(directory / name)
    for name in FIND_NAMES[kind]:
        found = ctypes.util.find_library(name)  # ldconfig's cache: a name the loader resolves
        if found:
            return found
    return None


def choose(setting: str) -> str | None:
    """The library to preload for a SLINGSHOT_MALLOC setting, or None for the system allocator."""
    setting = setting.strip() or "auto"
    if setting == "system":
        return None
    if setting == "auto":
        return find_library("tcmalloc") or find_library("jemalloc")
    if setting in LIBRARIES:
        return find_library(setting)
    return setting if Path(setting).is_file() else None


def preloaded() -> str | None:
    """The allocator mapped into this process ("tcmalloc", "jemalloc", another library's file name), or None for
    the system's. Read from /proc/self/maps, so it reports what is loaded, however it got there."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            mapped = {line.split()[-1] for line in maps if "malloc" in line and "/" in line}
    except OSError:
        return None
    for kind in LIBRARIES:
        if any(Path(path).name.startswith(f"lib{kind}") for path in mapped):
            return kind
    return Path(_active).name if _active and any(_active in path for path in mapped) else None


def preload_environment(library: str) -> dict[str, str]:
    """This process's environment with `library` first in LD_PRELOAD, for a process started under it."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{library} {env['LD_PRELOAD']}".strip() if env.get("LD_PRELOAD") else library
    # gperftools reports every allocation over 1 GB on stderr (loading a large model's weights): noise here
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


def relaunch_under_allocator(argv: list[str]) -> None:
    """Re-execute `python -m slingshot argv[1:]` with the chosen allocator preloaded; return if there is nothing to do.

    Does nothing off Linux, when the choice is `system` or finds no library, when LD_PRELOAD already names an
    allocator, or in the re-executed process itself. In that process LD_PRELOAD is removed again from the
    environment (the library stays loaded), so programs slingshot starts do not inherit it.
    """
    global _active
    if os.environ.get(ACTIVE_ENV):  # the re-executed process
        _active = os.environ.pop(ACTIVE_ENV)
        rest = os.environ.get("LD_PRELOAD", "").replace(_active, "", 1).strip()
        if rest:
            os.environ["LD_PRELOAD"] = rest
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    if not sys.platform.startswith("linux") or not sys.executable or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return
    setting = os.environ.get(ENV, "auto").strip() or "auto"
    library = choose(setting)
    if library is None:
        if setting not in ("auto", "system"):
            print(f"warning: {ENV}={setting}: no such allocator library found (looked in "
                  f"{', '.join(map(str, search_dirs()))} and ldconfig); using the system allocator", file=sys.stderr)
        return
    env = preload_environment(library)
    env[ACTIVE_ENV] = library
    try:
        os.execve(sys.executable, [sys.executable, "-m", "slingshot", *argv[1:]], env)
    except OSError:
        return  # cannot re-execute (an unusual interpreter): run under the system allocator


def command() -> None:
    """The `slingshot` console script and `python -m slingshot`: pick the allocator, then run the CLI."""
    relaunch_under_allocator(sys.argv)
    from slingshot.cli import main

    main()
