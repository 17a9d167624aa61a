"""Authentication: which active token a request carries (SPEC sections 2 `tokens`, 4, 6, 9).

`TokenValidator.peek(token)` answers from the in-process cache without I/O;
`await TokenValidator.validate(token)` asks the shared cache and the sources behind it.
"""

from gateway.authn.info import TokenInfo
from gateway.authn.validator import TokenValidator

__all__ = ["TokenInfo", "TokenValidator"]
