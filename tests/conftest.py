"""Shared fixtures live in tests/fixtures/ as pytest plugins."""

from hypothesis import settings

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.idp",
    "tests.fixtures.servers",
    "tests.fixtures.process",
    "tests.fixtures.pki",
    "tests.fixtures.tls_servers",
    "tests.fixtures.otlp",
]

# Property tests judge results, not speed: no per-example deadline (a loaded CI machine would
# otherwise fail them at random).
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")
