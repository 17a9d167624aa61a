"""nginx configs for the bench: the upstream (`{"ok":true}`) and the `auth_request` peer.

The peer is what users would deploy instead of the gateway: 1 worker, `auth_request` to an
auth endpoint (an nginx server in the same process that answers 200 with `X-Auth-Subject` for
the bench token, 401 otherwise), the auth subrequest cached by `proxy_cache` keyed by the
Authorization header (so the auth endpoint is asked once), identity header set upstream, the
token not forwarded, keep-alive to the upstream, and a buffered access log (`buffer=64k`).

Everything nginx writes (pid, logs, cache, temp files) goes under the given directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from procs import HOST

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def _main(root: Path, http_body: str, user: str) -> str:
    temp = "\n".join(
        f"    {k}_temp_path {root}/{k}_temp;"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    default_type application/octet-stream;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server_tokens off;
{http_body}
}}
"""


def _user() -> str:
    import os

    return "user root;" if os.geteuid() == 0 else ""


def upstream_conf(root: Path, port: int) -> Path:
    """The upstream: `{"ok":true}` on every path, keep-alive, request bodies discarded."""
    root.mkdir(parents=True, exist_ok=True)
    body = f"""
    access_log off;
    server {{
        listen {HOST}:{port} reuseport backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}"""
    path = root / "nginx.conf"
    path.write_text(_main(root, body, _user()))
    return path


_PEER_LOCATIONS = """
        location = /_auth {{
            internal;
            proxy_pass http://authsrv/check;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_cache auth;
            proxy_cache_key $http_authorization;
            proxy_cache_valid 200 5m;
            proxy_cache_valid 401 10s;
        }}
        location / {{
            auth_request /_auth;
            auth_request_set $auth_subject $upstream_http_x_auth_subject;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header X-Auth-Subject $auth_subject;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}"""

#: TLS as the gateway's listener offers it (gateway/tls.py): 1.2 and 1.3, ECDHE + AEAD
_PEER_TLS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        ssl_prefer_server_ciphers on;"""


def peer_conf(
    root: Path,
    port: int,
    auth_port: int,
    upstream_port: int,
    token: str,
    tls: tuple[int, str, str] | None = None,
) -> Path:
    """The auth_request + proxy_cache peer (listening on `port`, auth endpoint on `auth_port`);
    with `tls` = (port, cert_file, key_file), the same server over HTTPS on that port too."""
    root.mkdir(parents=True, exist_ok=True)
    locations = _PEER_LOCATIONS.format()
    tls_server = ""
    if tls is not None:
        tls_port, cert, key = tls
        tls_server = f"""
    server {{
        listen {HOST}:{tls_port} ssl backlog=4096;
        access_log {root}/access.log bench buffer=64k;{_PEER_TLS.format(cert=cert, key=key)}
{locations}
    }}"""
    body = f"""
    proxy_cache_path {root}/authcache levels=1:2 keys_zone=auth:10m max_size=64m inactive=10m;
    log_format bench '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                     '$request_time $upstream_response_time';
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
    }}
    upstream authsrv {{
        server {HOST}:{auth_port};
        keepalive 8;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        access_log {root}/access.log bench buffer=64k;
{locations}
    }}{tls_server}
    server {{
        listen {HOST}:{auth_port};
        access_log {root}/auth.log bench;  # one line per auth endpoint hit (cache misses)
        location = /check {{
            if ($http_authorization = "Bearer {token}") {{
                add_header X-Auth-Subject u;
                return 200;
            }}
            return 401;
        }}
    }}"""
    path = root / "nginx.conf"
    path.write_text(_main(root, body, _user()))
    return path


def argv(conf: Path) -> list[str]:
    """Command line running nginx in the foreground on `conf` (no writes outside its dir)."""
    assert NGINX is not None
    root = conf.parent
    return [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
