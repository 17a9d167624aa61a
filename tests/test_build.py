"""The suite runs against what users run: the mypyc-compiled request path (setup.py).

`make` compiles it; a `GATEWAY_PURE_PYTHON=1` environment runs the same tests on the pure-Python
modules instead. A compiled module older than its source would make the tests pass on code that
is not the code in the tree, so that is refused too.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gateway

ROOT = Path(__file__).resolve().parent.parent
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))
PURE = os.environ.get("GATEWAY_PURE_PYTHON") == "1"


def native_modules() -> list[str]:
    """NATIVE_MODULES as setup.py lists them (read, not imported: setup.py runs setup())."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "NATIVE_MODULES":
            return [str(ast.literal_eval(e)) for e in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no NATIVE_MODULES")


def c_modules() -> list[tuple[str, str]]:
    """C_MODULES as setup.py lists them: (module name, C source) of the project's own C."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "C_MODULES":
            assert node.value is not None
            return [(str(name), str(source)) for name, source in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no C_MODULES")


def test_native_modules_exist_and_cover_the_request_path() -> None:
    paths = native_modules()
    for p in paths:
        assert (ROOT / p).is_file(), p
    for hot in ("gateway/http/server.py", "gateway/pipeline.py", "gateway/forward.py"):
        assert hot in paths


@pytest.mark.skipif(PURE, reason="GATEWAY_PURE_PYTHON=1: the pure-Python build is under test")
@pytest.mark.parametrize("path", native_modules())
def test_request_path_module_is_compiled_and_current(path: str) -> None:
    name = path.removesuffix(".py").replace("/", ".")
    module = importlib.import_module(name)
    assert (module.__file__ or "").endswith(EXT_SUFFIX), f"{name} runs as Python: `make install`"
    loaded = ROOT / (path.removesuffix(".py") + EXT_SUFFIX)
    source = ROOT / path
    assert loaded.stat().st_mtime >= source.stat().st_mtime, (
        f"{loaded.name} is older than {path}: stale compiled code, run `make install`"
    )


def test_c_modules_exist() -> None:
    modules = c_modules()
    assert ("gateway._access", "gateway/_access.c") in modules
    for name, source in modules:
        assert (ROOT / source).is_file(), source
        assert (ROOT / (name.replace(".", "/") + ".pyi")).is_file(), f"{name} has no type stub"


@pytest.mark.skipif(PURE, reason="GATEWAY_PURE_PYTHON=1: the pure-Python build is under test")
@pytest.mark.parametrize(("name", "source"), c_modules())
def test_c_module_is_built_and_current(name: str, source: str) -> None:
    module = importlib.import_module(name)  # an ImportError fails: `make install`
    loaded = Path(module.__file__ or "")
    assert loaded.name.endswith(EXT_SUFFIX), f"{name} is not an extension module"
    assert loaded.parent == (ROOT / source).parent, f"{name} loaded from {loaded}, not the tree"
    assert loaded.stat().st_mtime >= (ROOT / source).stat().st_mtime, (
        f"{loaded.name} is older than {source}: stale C module, run `make install`"
    )


def test_version_names_the_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout
    expected = "pure-python" if PURE else "compiled"
    assert out.strip() == f"gateway {gateway.__version__} ({expected})"
    assert gateway.build_kind() == expected


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_isolated_build_gets_the_runtime_dependencies(pure: bool) -> None:
    """An isolated `pip install .` must see the libraries' types (a compiled class with an
    unknown base crashes at run time): the build backend asks for the project's dependencies,
    unless the build is pure-Python."""
    import tomllib

    env = {**os.environ, "GATEWAY_PURE_PYTHON": "1" if pure else "0"}
    code = (
        "import json, sys; sys.path.insert(0, 'tools'); import native_build as b; "
        "print(json.dumps([b.get_requires_for_build_wheel(), b.get_requires_for_build_editable()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    wheel, editable = json.loads(out)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = [] if pure else deps
    assert wheel == expected
    assert editable == expected
