"""Static checks of the Dockerfile, .dockerignore and requirements.lock (no container engine)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
CONFIG_PATH = "/etc/gateway/gateway.yaml"
CONTAINER_TMP = "/tmp"  # noqa: S108 - a path inside the image, not a temp file on this host

SECRET_NAME = re.compile(
    r"(SECRET|PASSW(OR)?D|PASSWD|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH)", re.I
)
SECRET_VALUE = re.compile(
    r"(-----BEGIN|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abp]-|eyJ[A-Za-z0-9_-]{10,}\.)"
)


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword, raw argument text and 1-based line number."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec form) argument list, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """Leading `--flag=value` options and the remaining shell words."""
        words = shlex.split(self.args, comments=False)
        flags: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    """A build stage: its FROM image, optional name and instructions."""

    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Instructions of this stage with the given keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Split a Dockerfile into instructions (continuations joined, comments dropped).

    Returns the global ARG defaults (ARGs before the first FROM) and every instruction.
    """
    instructions: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue  # blank line, comment or parser directive
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        keyword, _, args = " ".join(buf).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    assert not buf, "the Dockerfile ends inside a line continuation"
    global_args: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
    return global_args, instructions


def stages(text: str) -> list[Stage]:
    """The build stages, with ARG references in FROM lines expanded from global ARG defaults."""
    global_args, instructions = parse_dockerfile(text)
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            _, words = ins.flags_and_words()
            image = re.sub(
                r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                lambda m: global_args.get(m.group(1), m.group(0)),
                words[0],
            )
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            result.append(Stage(image=image, name=name))
        elif result:
            result[-1].instructions.append(ins)
    return result


def env_pairs(ins: Instruction) -> dict[str, str]:
    """`ENV A=1 B="two words"` (or the legacy `ENV A 1`) as a dict."""
    words = shlex.split(ins.args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker's .dockerignore rules (last match wins, parents count) exclude `path`."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        compiled = regex(pattern.strip().strip("/"))
        if any(compiled.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def ignore_patterns() -> list[str]:
    """Non-comment lines of .dockerignore."""
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def lock_pins() -> dict[str, str]:
    """requirements.lock as {canonical name: version}; every line must be `name==version`."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"requirements.lock:{number}: {raw!r} is not an exact `name==version` pin"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"requirements.lock:{number}: {name} pinned twice"
        pins[name] = m.group(2)
    return pins


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    """The parsed Dockerfile."""
    return stages(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(dockerfile: list[Stage]) -> Stage:
    """The last (runtime) stage."""
    return dockerfile[-1]


def test_multi_stage_build(dockerfile: list[Stage], final: Stage) -> None:
    """The image is built in several stages and the runtime stage copies from an earlier one."""
    assert len(dockerfile) >= 2
    names = {s.name for s in dockerfile[:-1]}
    froms = [i.flags_and_words()[0].get("from") for i in final.all("COPY")]
    assert any(f in names for f in froms), "the runtime stage copies nothing from the builder"


def test_base_images_pinned(dockerfile: list[Stage]) -> None:
    """Every external base image is a Python 3.11 slim image pinned by exact tag and digest."""
    stage_names = {s.name for s in dockerfile if s.name}
    for stage in dockerfile:
        if stage.image in stage_names:
            continue
        m = re.fullmatch(
            r"(?:docker\.io/library/)?python:(?P<tag>[^@\s]+)(?:@(?P<digest>sha256:[0-9a-f]{64}))?",
            stage.image,
        )
        assert m, f"unexpected base image {stage.image!r}"
        assert "latest" not in stage.image
        assert re.fullmatch(r"3\.11\.\d+-slim(-bookworm)?", m.group("tag")), (
            f"{stage.image!r}: the tag must name an exact 3.11 patch release of the slim image"
        )
        assert m.group("digest"), f"{stage.image!r} is not pinned by digest"


def test_runs_as_numeric_non_root_user(final: Stage) -> None:
    """The runtime stage's last USER is a numeric, non-zero UID (and GID)."""
    users = final.all("USER")
    assert users, "the runtime stage has no USER and would run as root"
    user = users[-1].args.strip()
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user!r} must be a numeric non-root UID"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user!r}: group must not be 0"
    assert uid == "10001"


def test_no_secrets_in_env_or_arg() -> None:
    """No ENV or ARG carries a secret-looking name or value."""
    _, instructions = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    for ins in instructions:
        if ins.keyword == "ENV":
            pairs = env_pairs(ins)
        elif ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            pairs = {name.strip(): default.strip()}
        else:
            continue
        for name, value in pairs.items():
            assert not SECRET_NAME.search(name), f"line {ins.line}: {ins.keyword} {name}"
            assert not SECRET_VALUE.search(value), f"line {ins.line}: {ins.keyword} {name}=..."


def test_copy_sources_exist_and_are_in_context(dockerfile: list[Stage]) -> None:
    """Every COPY/ADD source from the build context exists and is not .dockerignore'd."""
    patterns = ignore_patterns()
    seen = 0
    for stage in dockerfile:
        for ins in stage.all("COPY") + stage.all("ADD"):
            flags, words = ins.flags_and_words()
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            if "from" in flags:
                continue
            matched = 0
            for src in words[:-1]:
                seen += 1
                if any(c in src for c in "*?["):
                    # A glob may match nothing (the `README.m[d]` optional-file idiom) as long as
                    # the instruction as a whole copies something.
                    paths = sorted(ROOT.glob(src))
                else:
                    paths = [ROOT / src]
                    assert paths[0].exists(), f"line {ins.line}: COPY source {src!r} is missing"
                matched += len(paths)
                files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*.py"))]
                assert files or not paths, f"line {ins.line}: {src!r} holds no file"
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" in rel:
                        continue
                    assert not dockerignore_excludes(patterns, rel), (
                        f"line {ins.line}: {rel} is excluded by .dockerignore"
                    )
            assert matched, f"line {ins.line}: COPY copies nothing"
    assert seen >= 3


def test_dockerignore_keeps_local_state_out() -> None:
    """.dockerignore excludes the virtualenv, git metadata, tests, caches and local configs."""
    patterns = ignore_patterns()
    for path in [
        ".venv/bin/python",
        ".git/config",
        "tests/test_helm.py",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "config/gateway.yaml",
        ".env",
        "helm/gateway/values.yaml",
    ]:
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the builder"
    assert not dockerignore_excludes(patterns, "gateway/cli.py")


def test_lock_pins_every_runtime_dependency() -> None:
    """requirements.lock pins each [project.dependencies] entry with `==` to a version it allows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = lock_pins()
    linux = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11"}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock does not pin {req.name}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {req.specifier}"
        )
        if "crypto" in req.extras:
            assert "cryptography" in pins


def test_lock_is_installed_without_resolution(dockerfile: list[Stage]) -> None:
    """The builder installs the lock with --no-deps and verifies it with `pip check`."""
    runs = " ".join(i.args for s in dockerfile for i in s.all("RUN"))
    assert re.search(r"pip install --no-deps[^&]*(-r|--requirement) requirements\.lock", runs)
    assert "pip check" in runs


def test_builder_compiles_the_request_path(dockerfile: list[Stage], final: Stage) -> None:
    """The wheel is built with the compiler and mypy pinned as pyproject pins them, and the build
    fails unless the installed gateway reports the compiled build; no compiler in the image."""
    builder = [s for s in dockerfile if s is not final]
    runs = " ".join(i.args for s in builder for i in s.all("RUN"))
    args = " ".join(i.args for s in builder for i in s.all("ARG"))
    assert re.search(r"apt-get install[^&]*\bgcc\b", runs)
    pinned = re.search(
        r'requires = \[[^\]]*"mypy==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()
    )
    assert pinned is not None
    assert f"MYPY_VERSION={pinned.group(1)}" in args
    assert "gateway --version | grep -q '(compiled)'" in runs
    final_runs = " ".join(i.args for i in final.all("RUN"))
    assert "gcc" not in final_runs


def test_entrypoint_is_gateway_cli_with_config(final: Stage) -> None:
    """ENTRYPOINT is the `gateway` console script and CMD serves /etc/gateway/gateway.yaml."""
    entrypoint = final.all("ENTRYPOINT")[-1].exec_form()
    cmd = final.all("CMD")[-1].exec_form()
    assert entrypoint == ["gateway"]
    assert cmd == ["serve", "--config", CONFIG_PATH]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["gateway"] == "gateway.cli:main"


def test_ports_exposed(final: Stage) -> None:
    """The main (8080) and admin (9901) ports are exposed."""
    exposed = {w.split("/")[0] for i in final.all("EXPOSE") for w in i.args.split()}
    assert {"8080", "9901"} <= exposed


def test_read_only_root_filesystem_friendly(final: Stage) -> None:
    """The runtime writes no bytecode and keeps temporary files under /tmp."""
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        env.update(env_pairs(ins))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("TMPDIR", CONTAINER_TMP) == CONTAINER_TMP
    assert env.get("GATEWAY_CONFIG") == CONFIG_PATH
    assert not final.all("VOLUME"), "VOLUME would create anonymous writable volumes"


def test_parser_handles_continuations_and_dockerignore_rules() -> None:
    """The small parser joins continuations, skips comments and applies .dockerignore rules."""
    text = (
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11.9-slim\nFROM ${BASE} AS b\n"
        "ENV A=1 \\\n  # comment\n  B=two\nFROM b\nUSER 1:1\n"
    )
    parsed = stages(text)
    assert [s.image for s in parsed] == ["python:3.11.9-slim", "b"]
    assert env_pairs(parsed[0].all("ENV")[0]) == {"A": "1", "B": "two"}
    rules = ["*", "!gateway/", "**/__pycache__"]
    assert dockerignore_excludes(rules, "README.md")
    assert not dockerignore_excludes(rules, "gateway/a/b.py")
    assert dockerignore_excludes(rules, "gateway/a/__pycache__/b.pyc")
