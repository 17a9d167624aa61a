"""Command line (docs/commands.md). Exit codes: 0 success, 2 bad usage or config, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import __version__, build_kind
from gateway.config import load_config
from gateway.config.models import AdminConfig, ForwardAuthConfig, GatewayConfig, ListenConfig
from gateway.config.units import format_duration, parse_duration
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.authn.store import Binding


class UsageError(Exception):
    """Bad command-line input: exit 2 with a message."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="OAuth 2.0 bearer-token gateway")
    p.add_argument("--version", action="version", version=f"gateway {__version__} ({build_kind()})")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"))

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("path")

    sub.add_parser(
        "config-reference",
        help="print the Markdown reference of every config key (docs/configuration.md)",
    )

    r = sub.add_parser("routes", help="print the route table in match order")
    r.add_argument("path")

    pr = sub.add_parser("proof", help="print the appsecret_proof for a token")
    pr.add_argument("--token", required=True)
    pr.add_argument("--secret", required=True)
    pr.add_argument("--time", type=int, default=None)

    t = sub.add_parser("token", help="mint or revoke tokens in the configured store")
    tsub = t.add_subparsers(dest="action", required=True)
    ti = tsub.add_parser("issue")
    ti.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"))
    ti.add_argument("--grant", required=True)
    ti.add_argument("--client-id", required=True)
    ti.add_argument("--subject", default=None)
    ti.add_argument("--scope", default="")
    ti.add_argument("--ttl", default=None)
    ti.add_argument("--audience", action="append", default=[])
    ti.add_argument("--dpop-jkt", default=None)
    ti.add_argument("--cert-thumbprint", default=None)
    tr = tsub.add_parser("revoke")
    tr.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"))
    tr.add_argument("token")

    d = sub.add_parser("demo", help="run a self-contained demonstration")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument(
        "--self-test", action="store_true", help="run every printed command, check, and exit"
    )
    d.add_argument("--tls", action="store_true", help="HTTPS with a throwaway CA and certificates")
    return p


def _load(path: str | None) -> GatewayConfig:
    if not path:
        raise UsageError("no config: pass --config PATH or set GATEWAY_CONFIG")
    return load_config(path)


def _summary(cfg: GatewayConfig) -> list[str]:
    redis = "none (in-process store and cache)"
    if cfg.redis is not None:
        redis = re.sub(r"//([^@/]*)@", "//***@", cfg.redis.url)
    sources = ", ".join(s.type for s in cfg.tokens.sources)
    lines = [
        f"listen      {_where(cfg.listen)}",
        "admin       " + (_where(cfg.admin) if cfg.admin else "off"),
        f"workers     {cfg.workers}",
        f"redis       {redis}",
        f"sources     {sources}",
        f"cache       ttl {format_duration(cfg.tokens.cache.ttl)}, "
        f"negative {format_duration(cfg.tokens.cache.negative_ttl)}, "
        f"stale_if_error {format_duration(cfg.tokens.cache.stale_if_error)}",
        f"apps        {len(cfg.apps)}",
        f"upstreams   {', '.join(cfg.upstreams) or '(none)'}",
        f"routes      {len(cfg.routes)}",
    ]
    if cfg.forward_auth is not None:
        lines.insert(2, f"forward_auth {_where(cfg.forward_auth)}")
    return lines


def _where(listener: ListenConfig | AdminConfig | ForwardAuthConfig) -> str:
    where = f"{listener.host}:{listener.port}"
    tls = listener.tls
    if tls is None:
        return where
    clients = tls.verify_clients
    return f"{where} (TLS {tls.min_version}+" + (
        f", client certificates {clients})" if clients else ")"
    )


def _check_tls_files(cfg: GatewayConfig) -> None:
    """The listeners' certificate files load, as `serve` will need them to (ConfigError)."""
    from gateway.tls import listener_files, listener_tls

    problems: list[str] = []
    for name, listener in (
        ("listen", cfg.listen),
        ("forward_auth", cfg.forward_auth),
        ("admin", cfg.admin),
    ):
        if listener is None or listener.tls is None:
            continue
        unreadable = [f for f in listener_files(listener.tls) if not os.access(f, os.R_OK)]
        if unreadable:  # named here: OpenSSL's error would not say which file
            problems += [f"{name}.tls: cannot read {f}" for f in unreadable]
            continue
        try:
            listener_tls(f"{name}.tls", listener.tls)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.path)
    _check_tls_files(cfg)
    print(f"{args.path}: OK")
    for line in _summary(cfg):
        print("  " + line)
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from gateway.routing import RouteTable, describe_routes

    cfg = load_config(args.path)
    for line in describe_routes(RouteTable.from_config(cfg)):
        print(line)
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from gateway.config.reference import render_reference

    sys.stdout.write(render_reference())
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    from gateway.proof import compute_proof

    print(compute_proof(args.token, args.secret, args.time))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.authn.grants import GrantMapper
    from gateway.tokens_cli import issue_token, revoke_token

    cfg = _load(args.config)
    if args.action == "issue":
        try:
            ttl = parse_duration(args.ttl) if args.ttl is not None else None
        except ValueError as exc:
            raise UsageError(f"--ttl: {exc}") from None
        if ttl is not None and ttl <= 0:
            raise UsageError("--ttl: a token lifetime must be positive")
        try:  # an unknown grant is bad usage (2), not a failure (1)
            GrantMapper(cfg.tokens.grant).canonical(args.grant)
        except ValueError as exc:
            raise UsageError(f"--grant: {exc}") from None
        binding = _binding(args)
        token = asyncio.run(
            issue_token(cfg, args.grant, args.client_id, args.subject, args.scope, ttl, binding)
        )
        print(token)
        return 0
    asyncio.run(revoke_token(cfg, args.token))
    print("revoked")
    return 0


def _binding(args: argparse.Namespace) -> Binding:
    """--audience (repeatable), --dpop-jkt and --cert-thumbprint: what the token is for and
    bound to; a malformed thumbprint is bad usage."""
    from gateway.authn.store import Binding, check_thumbprint

    audience = tuple(a for a in args.audience if a)
    try:
        if args.dpop_jkt is not None:
            check_thumbprint(args.dpop_jkt, "--dpop-jkt")
        if args.cert_thumbprint is not None:
            check_thumbprint(args.cert_thumbprint, "--cert-thumbprint")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Binding(audience, args.dpop_jkt, args.cert_thumbprint)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.serve import install_uvloop, serve

    cfg = _load(args.config)
    setup_logging(cfg.log)
    workers = cfg.workers_count
    if workers > 1:
        return _run_workers(cfg, args.config, workers)
    install_uvloop()
    asyncio.run(serve(cfg, args.config))
    return 0


def _run_workers(cfg: GatewayConfig, path: str, workers: int) -> int:
    """`workers: N|auto`: N processes sharing the ports through SO_REUSEPORT, one admin
    listener in the parent for all of them."""
    from gateway.workers import run_workers

    return run_workers(cfg, path, workers)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.port, args.self_test, args.tls)


COMMANDS = {
    "serve": cmd_serve,
    "check-config": cmd_check,
    "config-reference": cmd_config_reference,
    "routes": cmd_routes,
    "proof": cmd_proof,
    "token": cmd_token,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"config error ({len(exc.problems)}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # the last line of defence: a message, not a traceback
        print(f"gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
