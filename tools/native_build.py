"""Build backend: setuptools, plus the runtime dependencies in the build environment.

mypyc (setup.py) compiles the request path against the types of the libraries it calls
(prometheus_client, httptools, structlog, ...). Compiled without them those types are unknown,
and a compiled class whose base is unknown crashes at run time. So an isolated build (`pip
install .`, `pip wheel .`) gets the project's own dependencies installed next to setuptools and
mypy. `GATEWAY_PURE_PYTHON=1` builds without compiling and needs neither.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools.build_meta import *  # noqa: F403  (the rest of the PEP 517/660 hooks as they are)


def _runtime_dependencies() -> list[str]:
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        return []
    pyproject = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))
    return list(pyproject["project"]["dependencies"])


# setuptools' own versions of these two run setup.py to collect `setup_requires`, which this
# project does not use; setup.py would then refuse to compile before the dependencies are there.
def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _runtime_dependencies()


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _runtime_dependencies()
