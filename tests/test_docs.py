"""The documentation in docs/: the generated configuration reference is current and every
config field is described."""

from __future__ import annotations

import difflib
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
