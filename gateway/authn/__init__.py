"""Authentication: which active token a request carries (docs/configuration.md `tokens`).

`validator.TokenValidator.peek(token)` answers from the in-process cache without I/O;
`await TokenValidator.validate(token)` asks the shared cache and the sources behind it.

Nothing is imported here: `gateway.authn.info` (TokenInfo) is read by modules the validator
itself depends on (the Redis connection's spans), so importing the validator from the package
would make `import gateway.redis_conn` circular.
"""
