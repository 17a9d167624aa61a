"""The documentation in docs/: the generated configuration reference is current, every config
field is described, and no Markdown file links outside the repository (or to a missing file or
heading inside it)."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config
from gateway.config.models import GatewayConfig
from gateway.config.reference import COMMAND, MINIMAL_EXAMPLE, _walk, render_reference

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
SKIP_DIRS = {".git", ".venv", "build", "dist", "node_modules", ".mypy_cache", ".ruff_cache"}


def _markdown_files() -> list[Path]:
    return sorted(
        p
        for p in ROOT.rglob("*.md")
        if not SKIP_DIRS & set(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    )


def test_configuration_reference_is_current():
    """docs/configuration.md is exactly what `gateway config-reference` prints now."""
    printed = subprocess.run(
        [sys.executable, "-m", "gateway", "config-reference"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == render_reference()
    committed = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if committed != printed:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    printed.splitlines(keepends=True),
                    "docs/configuration.md (committed)",
                    "gateway config-reference (now)",
                )
            )[:60]
        )
        pytest.fail(
            "docs/configuration.md is out of date with gateway/config/models.py; "
            f"regenerate it with `{COMMAND}`:\n{diff}"
        )


def test_every_config_field_and_section_is_described():
    """Each model has a docstring and each of its fields a non-empty description."""
    missing = []
    for section in _walk(GatewayConfig, "", 0):
        if not (section.model.__doc__ or "").strip():
            missing.append(f"{section.model.__name__} (docstring)")
        for name, field in section.model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{section.model.__name__}.{name}")
    assert missing == []


def test_every_key_has_a_row_in_the_reference():
    """Every field of every model appears, by its full key path, in the reference."""
    text = render_reference()
    for section in _walk(GatewayConfig, "", 0):
        base = section.path.partition(" (")[0]
        for name in section.model.model_fields:
            key = f"{base}.{name}" if base else name
            assert f"| `{key}`" in text, key


def test_the_reference_example_loads():
    """The example at the top of the reference is a valid config."""
    cfg = parse_config(yaml.safe_load(MINIMAL_EXAMPLE), env={})
    assert [r.name for r in cfg.routes] == ["status", "api"]


def test_the_readme_opens_with_the_two_commands():
    """A newcomer reads `make demo` and `make test` first."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "```sh"
    assert lines[3].startswith("make demo ")
    assert lines[4].startswith("make test ")
    assert "redis-server and nginx" in lines[4]


def test_yaml_blocks_in_the_docs_parse():
    """Every ```yaml block of docs/ and the README is valid YAML (configs are checked above)."""
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```yaml\n(.*?)```", md.read_text(encoding="utf-8"), re.S):
            yaml.safe_load(block)


# -- links ---------------------------------------------------------------------------------

_INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _links(text: str) -> list[str]:
    text = _CODE.sub("", text)  # links inside code are not links
    return _INLINE.findall(text) + _REFERENCE_DEF.findall(text) + _HTML.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _problems(md: Path) -> list[str]:
    problems = []
    for link in _links(md.read_text(encoding="utf-8")):
        where = f"{md.relative_to(ROOT)}: {link}"
        if "shared/" in link or "SPEC.md" in link:
            problems.append(f"{where}: points at the project's private spec")
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
            continue  # a URL (https:, mailto:): not a file of ours
        path_part, _, anchor = link.partition("#")
        if path_part.startswith("/"):
            problems.append(f"{where}: absolute path")
            continue
        target = (md.parent / path_part).resolve() if path_part else md
        if not target.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif not target.exists():
            problems.append(f"{where}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            problems.append(f"{where}: no such heading")
    return problems


def test_markdown_links_stay_inside_the_repository():
    """No Markdown file links outside the repository, to a missing file, or a missing heading."""
    files = _markdown_files()
    assert ROOT / "README.md" in files and REFERENCE in files
    problems = [p for md in files for p in _problems(md)]
    assert problems == []


def test_user_facing_text_does_not_point_at_the_private_spec():
    """README, docs, config examples and the chart never send the reader to SPEC.md."""
    paths = [ROOT / "README.md", *(ROOT / "docs").rglob("*"), *(ROOT / "config").rglob("*")]
    paths += (ROOT / "helm").rglob("*")
    found = []
    for path in paths:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"SPEC(\.md| section| ?§)|\.\./shared", line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_the_link_checker_catches_outside_links(tmp_path, monkeypatch):
    """The checker itself: outside, private-spec and broken links are reported."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Some key\n")
    md = tmp_path / "README.md"
    md.write_text(
        "[spec](../shared/SPEC.md) [up](../x.md) [gone](docs/b.md) [ok](docs/a.md#some-key)\n"
        "[bad anchor](docs/a.md#nope) [web](https://example.com) `[code](../no.md)`\n"
        "[ref]: ../../etc/passwd\n"
    )
    problems = _problems(md)
    assert [p.split(": ")[1] for p in problems] == [
        "../shared/SPEC.md",
        "../x.md",
        "docs/b.md",
        "docs/a.md#nope",
        "../../etc/passwd",
    ]
