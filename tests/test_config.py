"""Config loading: every key (docs/configuration.md), substitution, *_file keys, units, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import load_config, parse_config
from gateway.config.units import parse_duration, parse_size
from gateway.demo import demo_config
from gateway.errors import ConfigError

CONFIG_DIR = Path(__file__).parent.parent / "config"
EXAMPLE_ENV = {
    "INTROSPECTION_SECRET": "s",
    "WEB_APP_SECRET": "w",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "INTROSPECTION_URL": "https://idp.example/introspect",
}
#: The least a config must hold: one route (and its upstream).
ONE_ROUTE = {
    "upstreams": {"api": {"url": "http://127.0.0.1:9000"}},
    "routes": [{"name": "api", "path_prefix": "/", "upstream": "api"}],
}


def _problems(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data, env or {})
    return err.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2),
        ("5m", 300),
        ("6h", 21600),
        ("365d", 31536000),
        (30, 30),
        ("1.5s", 1.5),
    ],
)
def test_durations(text, seconds):
    """Durations accept ms/s/m/h/d suffixes and plain seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [(100, 100), ("16KiB", 16384), ("10MB", 10_000_000), ("1GiB", 1024**3), ("2KB", 2000)],
)
def test_sizes(text, size):
    """Sizes accept bytes, powers of 1000 (KB/MB/GB) and of 1024 (KiB/MiB/GiB)."""
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5q", "-1s", "", "s", True, "1 2s"])
def test_bad_durations(bad):
    """Malformed durations are refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_defaults_match_spec():
    """A config of one route gets the documented defaults for everything else."""
    cfg = parse_config(ONE_ROUTE, {})
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 8080)
    assert (cfg.admin.host, cfg.admin.port) == ("127.0.0.1", 9901)
    assert cfg.limits.max_header_bytes == 16 * 1024
    assert cfg.limits.max_header_count == 100
    assert cfg.limits.max_body == 10 * 1024**2
    assert cfg.tokens.cache.ttl == 300
    assert cfg.tokens.grant.values["token"] == "implicit"
    assert cfg.session_path == "/oauth20/access-token"
    assert cfg.shutdown_timeout == 30


def test_env_substitution_and_defaults():
    """${VAR} is replaced, ${VAR:-default} falls back, an unset ${VAR} is an error."""
    data = {
        "redis": {"url": "redis://${HOST}:${PORT:-6379}/0", "key_prefix": "${PFX:-gw:}"},
        **ONE_ROUTE,
    }
    cfg = parse_config(data, {"HOST": "cache"})
    assert cfg.redis.url == "redis://cache:6379/0"
    assert cfg.redis.key_prefix == "gw:"
    assert _problems(data, {}) == ["redis.url: environment variable HOST is not set"]


def test_file_keys_read_secrets(tmp_path):
    """A key ending in _file takes its value from that file."""
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    data = {
        "tokens": {
            "sources": [
                {
                    "type": "introspection",
                    "url": "http://idp/introspect",
                    "client_id": "gw",
                    "client_secret_file": str(secret),
                }
            ]
        },
        **ONE_ROUTE,
    }
    cfg = parse_config(data, {})
    assert cfg.tokens.sources[0].client_secret.get_secret_value() == "s3cr3t"
    data["tokens"]["sources"][0]["client_secret_file"] = str(tmp_path / "missing")
    assert "client_secret_file: cannot read" in _problems(data)[0]


def test_empty_secrets_dropped_and_app_without_secret_refused():
    """Empty strings in secrets are dropped; an app left with none is an error."""
    apps = [{"client_id": "a", "secrets": ["${NEW}", "${OLD:-}"]}]
    cfg = parse_config({"apps": apps, **ONE_ROUTE}, {"NEW": "n"})
    assert [s.get_secret_value() for s in cfg.apps[0].secrets] == ["n"]
    assert _problems({"apps": [{"client_id": "a", "secrets": ["${OLD:-}"]}], **ONE_ROUTE}) == [
        "apps[0].secrets: an app needs at least one non-empty secret"
    ]


def test_every_error_names_its_key_path():
    """All problems are reported at once, each with its key path."""
    data = {
        "upstreams": {"api": {"url": "http://127.0.0.1:9000"}, "bad": {"url": "ftp://x"}},
        "limits": {"max_body": "lots"},
        "tokens": {"sources": [{"type": "jwt", "jwks_url": "x"}]},
        "routes": [
            {"name": "a", "path": "/a", "upstream": "api"},
            {"name": "b", "path": "/b", "upstream": "api"},
            {"name": "c", "path": "/c", "upstream": "api2"},
            {"name": "d", "path": "/d", "path_prefix": "/d", "upstream": "api"},
            {"name": "e", "path": "/e", "upstream": "api", "grants": ["nope"], "colour": 1},
        ],
    }
    problems = _problems(data)
    text = "\n".join(problems)
    assert "routes[2].upstream: no upstream named 'api2'" in problems
    assert "limits.max_body: invalid size 'lots'" in text
    assert "tokens.sources[0].issuer: Field required" in problems  # audience is optional
    assert "upstreams.bad: " in text
    assert "routes[3]: give exactly one of `path`, `path_prefix`, `path_regex`" in problems
    assert "routes[4].grants: unknown grant(s) ['nope']" in text
    assert "routes[4].colour: Extra inputs are not permitted" in problems


@pytest.mark.parametrize("name", ["standalone.yaml", "demo.yaml"])
def test_example_configs_are_valid(name, monkeypatch):
    """The examples in config/ load (the sidecar one is checked with its secret file below)."""
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(CONFIG_DIR / name, env={**EXAMPLE_ENV})
    assert cfg.routes


def test_sidecar_example_reads_secret_file(tmp_path):
    """The sidecar example's *_file key is what Kubernetes mounts."""
    text = (CONFIG_DIR / "sidecar.yaml").read_text()
    secret = tmp_path / "s"
    secret.write_text("x")
    path = tmp_path / "c.yaml"
    path.write_text(
        text.replace("/var/run/secrets/gateway/introspection-client-secret", str(secret))
    )
    cfg = load_config(path, env=EXAMPLE_ENV)
    assert cfg.tokens.sources[1].client_secret.get_secret_value() == "x"


def test_demo_example_matches_embedded_demo():
    """config/demo.yaml shows the same routes and policies as `gateway demo` runs."""
    shipped = load_config(CONFIG_DIR / "demo.yaml", env={})
    embedded = parse_config(demo_config(8080, "http://127.0.0.1:1", "http://127.0.0.1:2"), {})
    assert shipped.routes == embedded.routes
    assert shipped.apps == embedded.apps
    assert shipped.limits == embedded.limits
    assert shipped.rate_limits == embedded.rate_limits


def test_invalid_yaml_is_a_config_error(tmp_path):
    """Broken YAML is reported as a config error, not a traceback."""
    path = tmp_path / "c.yaml"
    path.write_text("routes: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "data",
    [None, {}, {"routes": None}, {"routes": []}, {"upstreams": ONE_ROUTE["upstreams"]}],
    ids=["empty-document", "empty-mapping", "null-routes", "no-routes", "upstreams-only"],
)
def test_a_config_without_routes_is_refused(data):
    """No route at all is a config error naming `routes`, never a gateway that serves nothing."""
    assert _problems(data) == ["routes: at least one route is required"]


@pytest.mark.parametrize("text", ["", "\n\n", "# truncated by an editor\n# nothing left\n"])
def test_an_empty_file_is_refused(tmp_path, text):
    """An empty or comments-only file (a truncated ConfigMap) does not load."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == ["routes: at least one route is required"]


def test_routes_errors_are_still_all_reported_with_the_rule():
    """The rule does not hide the other problems of a file."""
    problems = _problems({"limits": {"max_body": "lots"}})
    assert "routes: at least one route is required" in problems
    assert any(p.startswith("limits.max_body: invalid size") for p in problems)


def test_substituted_numbers_and_booleans_are_read_as_such():
    """`port: ${PORT:-8080}` is an integer once substituted (as docs/configuration.md says)."""
    data = {"listen": {"port": "${PORT:-8080}"}, "log": {"access": "${ACCESS}"}, **ONE_ROUTE}
    cfg = parse_config(data, {"ACCESS": "false"})
    assert cfg.listen.port == 8080
    assert cfg.log.access is False


def test_an_empty_variable_is_not_replaced_by_its_default():
    """`${NAME:-default}` falls back only when NAME is unset, as documented."""
    data = {"realm": "${REALM:-gateway}", **ONE_ROUTE}
    assert parse_config(data, {"REALM": ""}).realm == ""
    assert parse_config(data, {}).realm == "gateway"


def test_file_key_paths_are_relative_to_the_config_file(tmp_path):
    """A relative `X_file` path is read next to the config file, whatever the working dir."""
    (tmp_path / "realm.txt").write_text("  from-file\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        "realm_file: realm.txt\n"
        "upstreams: {api: {url: 'http://127.0.0.1:9000'}}\n"
        "routes: [{name: api, path_prefix: /, upstream: api}]\n"
    )
    assert load_config(path, env={}).realm == "from-file"
    path.write_text(path.read_text() + "realm: also\n")
    with pytest.raises(ConfigError, match="give either `realm` or `realm_file`"):
        load_config(path, env={})


def load_yaml_text(text: str):
    """parse_config of a YAML document, as load_config reads a file."""
    return parse_config(yaml.safe_load(text), env={})


def test_unquoted_off_is_off():
    """`appsecret_proof: off` unquoted is YAML's false; it means what the user wrote."""
    cfg = load_yaml_text(
        "upstreams: {api: {url: 'http://127.0.0.1:9'}}\n"
        "routes: [{name: r, path: /, upstream: api, appsecret_proof: off}]\n"
    )
    assert cfg.routes[0].appsecret_proof == "off"
    with pytest.raises(ConfigError, match=r"routes\[0\]\.appsecret_proof"):
        load_yaml_text(
            "upstreams: {api: {url: 'http://127.0.0.1:9'}}\n"
            "routes: [{name: r, path: /, upstream: api, appsecret_proof: on}]\n"
        )


def test_tls_file_keys_are_paths_not_contents(tmp_path):
    """cert_file, key_file, ca_file, client_ca_file name files the gateway reads (and re-reads):
    they stay paths, relative ones against the config file's folder, unlike other `x_file`
    keys, which are replaced by the file's content."""
    (tmp_path / "secret").write_text("s3cret\n")
    conf = tmp_path / "gateway.yaml"
    conf.write_text(
        "listen: {port: 8443, tls: {cert_file: tls/tls.crt, key_file: /abs/tls.key,"
        " client_ca_file: ca.pem}}\n"
        "upstreams: {api: {url: 'http://127.0.0.1:9'}}\n"
        "apps: [{client_id: web, secrets_file: secret}]\n"
        "routes: [{name: r, path: /, upstream: api}]\n"
    )
    with pytest.raises(ConfigError, match=r"apps\[0\]\.secrets"):
        load_config(conf)  # secrets_file gives one string, not a list: still read as content
    conf.write_text(
        conf.read_text().replace("apps: [{client_id: web, secrets_file: secret}]\n", "")
    )
    tls = load_config(conf).listen.tls
    assert tls is not None
    assert tls.cert_file == str(tmp_path / "tls" / "tls.crt")
    assert tls.key_file == "/abs/tls.key"
    assert tls.client_ca_file == str(tmp_path / "ca.pem")
    assert tls.verify_clients == "optional"


def test_client_auth_needs_a_ca():
    """`client_auth` without `client_ca_file` cannot be honoured: a config error."""
    with pytest.raises(ConfigError, match=r"listen\.tls: .*client_auth.*client_ca_file"):
        load_yaml_text(
            "listen: {tls: {cert_file: a, key_file: b, client_auth: required}}\n"
            "upstreams: {api: {url: 'http://127.0.0.1:9'}}\n"
            "routes: [{name: r, path: /, upstream: api}]\n"
        )
