"""Rate limits keyed by the validated identity (SPEC section 14): `policy` (compiled onto
routes) and `limiter` (the buckets, local and shared through Redis)."""
