"""Shared fixtures live in tests/fixtures/ as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.idp",
    "tests.fixtures.servers",
    "tests.fixtures.process",
]
