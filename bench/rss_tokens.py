"""Resident memory per 100,000 cached tokens in one gateway process (target: <= 40 MB).

Builds the real TokenValidator (in-memory store, no Redis), issues N tokens into its store,
measures RSS (VmRSS after gc.collect()), validates each token once (the way a first request
does: store lookup, TokenInfo built, entry put in the in-process LRU `LocalCache`), and measures
again. The difference, scaled to 100,000, is what the cache costs; the store's records are in
the "before" figure. `--trace` repeats the fill under tracemalloc and prints what dominates.

    python bench/rss_tokens.py [--tokens 100000] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import time
import tracemalloc
from pathlib import Path

from gateway.authn.cache import TokenDigest
from gateway.authn.validator import TokenValidator
from gateway.config import parse_config

TARGET_MB = 40.0


def rss_mb() -> float:
    """VmRSS of this process, in MB (10^6 bytes)."""
    status = Path("/proc/self/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert m is not None
    return int(m.group(1)) * 1024 / 1e6


def settled_rss() -> float:
    gc.collect()
    return rss_mb()


async def fill(n: int, trace: bool) -> tuple[float, float, int]:
    """(rss before, rss after, cached entries); with `trace`, prints tracemalloc's top lines."""
    cfg = parse_config(
        {
            "tokens": {
                "sources": [{"type": "store"}],
                "cache": {"ttl": "5m", "max_entries": max(n, 100_000)},
            },
            "upstreams": {"unused": {"url": "http://127.0.0.1:9"}},  # a config needs a route
            "routes": [{"name": "unused", "path_prefix": "/", "upstream": "unused"}],
        }
    )
    validator = TokenValidator.from_config(cfg, None)
    await validator.start()
    try:
        tokens = [
            await validator.issue("authorization_code", f"client-{i % 50}", f"user-{i}", "bench")
            for i in range(n)
        ]
        before = settled_rss()
        if trace:
            tracemalloc.start(1)
            snap0 = tracemalloc.take_snapshot()
        for token in tokens:
            await validator.validate(token)
        after = settled_rss()
        if trace:
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            stats = snap1.compare_to(snap0, "lineno")
            total = sum(s.size_diff for s in stats)
            print(f"tracemalloc: {total / 1e6:.1f} MB allocated by the fill; top lines:")
            for s in stats[:10]:
                print(f"  {s.size_diff / 1e6:7.2f} MB  {s.count_diff:>8} blocks  {s.traceback}")
        now = time.time()
        assert all(validator.peek(TokenDigest.of(t), now) is not None for t in tokens[-1000:]), (
            "tokens not cached"
        )
        return before, after, len(validator.local.entries)
    finally:
        await validator.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--trace", action="store_true", help="also show tracemalloc's top lines")
    args = p.parse_args()
    before, after, cached = asyncio.run(fill(args.tokens, trace=False))
    per_100k = (after - before) * 100_000 / args.tokens
    verdict = "within" if per_100k <= TARGET_MB else "OVER"
    print(
        f"RSS per 100,000 cached tokens: {per_100k:.1f} MB ({verdict} the {TARGET_MB:.0f} MB "
        f"target; {cached} entries cached, RSS {before:.1f} -> {after:.1f} MB)"
    )
    if args.trace:
        asyncio.run(fill(args.tokens, trace=True))


if __name__ == "__main__":
    main()
