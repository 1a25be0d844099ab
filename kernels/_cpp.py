"""Build and load small C++ extensions (CPU kernels) once per process, cached per user and machine.

`load_extension` wraps ``torch.utils.cpp_extension.load``. The build lives under
``$LABBENCH_CACHE/torch_extensions`` (default ``$XDG_CACHE_HOME/labbench`` or
``~/.cache/labbench``), in a directory named after a hash of everything that decides the binary: the
sources' bytes, the flags, torch's and Python's versions, the CPU architecture and, with
``native=True`` (``-march=native``), the CPU's feature flags. A second process on the same machine
loads the cached library in milliseconds; a change to a source, a flag or the machine rebuilds.
A home directory shared between different machines gets one build per kind of CPU.

A build needs a C++ compiler (Debian: ``build-essential``) and ninja (the ``ninja`` package, a
dependency of labbench). Where either is missing or the build fails, `load_extension` warns once,
naming what failed, and returns None; callers fall back to their torch path. ``required=True``
raises instead (tests use it, so that a broken build fails the test rather than skipping it).

The sources must name their module ``TORCH_EXTENSION_NAME`` (``PYBIND11_MODULE(TORCH_EXTENSION_NAME,
m)``): the module is built under ``<name>_<hash>``, so two versions never clash in one process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["ExtensionBuildError", "cache_dir", "load_extension"]

_LOCK = threading.Lock()
_WARNED: set[str] = set()


class ExtensionBuildError(RuntimeError):
    """A C++ extension could not be built or loaded; the message holds the compiler's output."""


def cache_dir() -> Path:
    """Root of labbench's extension builds: ``$LABBENCH_CACHE``, else the user's XDG cache."""
    root = os.environ.get("LABBENCH_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "labbench")
    return Path(root) / "torch_extensions"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so a ``-march=native`` build is tied to the CPU kind."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ensure_ninja_on_path() -> None:
    """Put the ``ninja`` package's binary on PATH when the venv is used without being activated."""
    try:
        import ninja  # the PyPI package ships the binary
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    path = os.environ.get("PATH", "")
    if bin_dir and bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + (os.pathsep + path if path else "")


@functools.cache
def _build(name: str, sources: tuple[str, ...], cflags: tuple[str, ...], ldflags: tuple[str, ...],
           native: bool) -> ModuleType | ExtensionBuildError:
    """Build (or load from the cache) one extension; the error instead of raising, cached too."""
    from torch.utils import cpp_extension

    flags = list(cflags) + (["-march=native"] if native else [])
    digest = hashlib.sha256()
    for part in (torch.__version__, sys.version, platform.machine(), *flags, "|", *ldflags,
                 _cpu_flags() if native else ""):
        digest.update(part.encode() + b"\0")
    try:
        for src in sources:
            digest.update(Path(src).read_bytes())
    except OSError as err:
        return ExtensionBuildError(f"{name}: cannot read source {err.filename}: {err.strerror}")
    module_name = f"{name}_{digest.hexdigest()[:16]}"
    build_dir = cache_dir() / module_name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _ensure_ninja_on_path()
        cpp_extension.verify_ninja_availability()
        return cpp_extension.load(name=module_name, sources=list(sources), extra_cflags=flags,
                                  extra_ldflags=list(ldflags), build_directory=str(build_dir),
                                  verbose=False)
    except Exception as err:  # compiler missing, compile error, link or import error
        detail = str(err).strip() or type(err).__name__
        return ExtensionBuildError(f"{name}: building the C++ extension in {build_dir} failed: "
                                   f"{detail}")


def load_extension(name: str, sources: list[str | Path] | tuple[str | Path, ...], *,
                   extra_cflags: tuple[str, ...] = ("-O3",), extra_ldflags: tuple[str, ...] = (),
                   openmp: bool = True, native: bool = True,
                   required: bool = False) -> ModuleType | None:
    """The compiled extension ``name`` built from ``sources``, or None if it cannot be built.

    Builds at most once per process and arguments (later calls return the same module, or None at
    once), and at most once per machine (see the module docstring for the cache).

    Args:
        name: a short identifier (``"packed_matmul"``); the module is built as ``<name>_<hash>``.
        sources: C++ source files; they must use ``PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)``.
        extra_cflags: compiler flags (default ``-O3``).
        extra_ldflags: linker flags.
        openmp: compile with ``-fopenmp`` so ``at::parallel_for`` runs on torch's threads
            (``torch.get_num_threads()``). No OpenMP library is linked: its symbols resolve to the
            one torch has loaded, so both share one thread pool and one thread count.
        native: add ``-march=native`` (the build is cached per CPU kind, so this is safe).
        required: raise `ExtensionBuildError` instead of warning and returning None.

    Returns:
        The loaded module, or None (after one warning per process and extension) when the compiler
        or ninja is missing or the build fails.

    Raises:
        ExtensionBuildError: only with ``required=True``, with the build's error output.
    """
    paths = tuple(str(Path(s).resolve()) for s in sources)
    cflags = tuple(extra_cflags) + (("-fopenmp",) if openmp else ())
    with _LOCK:
        result = _build(name, paths, cflags, tuple(extra_ldflags), native)
    if isinstance(result, ModuleType):
        return result
    if required:
        raise result
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(str(result), RuntimeWarning, stacklevel=2)
    return None
