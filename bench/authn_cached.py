"""Cost of the hot path for a cached token: `peek()` and `await validate()`, in microseconds.

Run: .venv/bin/python bench/authn_cached.py [iterations]
"""

from __future__ import annotations

import asyncio
import sys
import time

from gateway.authn.cache import TokenDigest
from gateway.authn.validator import TokenValidator
from gateway.config import parse_config


async def main(n: int) -> None:
    cfg = parse_config(
        {
            "tokens": {"sources": [{"type": "store"}]},
            "upstreams": {"unused": {"url": "http://127.0.0.1:9"}},  # a config needs a route
            "routes": [{"name": "unused", "path_prefix": "/", "upstream": "unused"}],
        },
        env={},
    )
    validator = TokenValidator.from_config(cfg, None)
    await validator.start()
    try:
        token = await validator.issue("authorization_code", "web-app", "alice", "read write")
        await validator.validate(token)  # now cached in process
        peek, digest = validator.peek, TokenDigest.of(token)
        started = time.perf_counter()
        for _ in range(n):
            peek(digest, time.time())
        per_peek = (time.perf_counter() - started) / n * 1e6
        validate = validator.validate
        started = time.perf_counter()
        for _ in range(n):
            await validate(token)
        per_validate = (time.perf_counter() - started) / n * 1e6
    finally:
        await validator.close()
    print(f"cached peek:            {per_peek:.3f} us/op ({n} ops, token of {len(token)} chars)")
    print(f"cached await validate:  {per_validate:.3f} us/op ({n} ops)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
