"""API keys: the one rule for reading a bearer token and matching it against the configured keys."""

from __future__ import annotations

import hashlib
import hmac


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyRing:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def matches(self, token: str | None) -> bool:
        """Compare against every key in constant time, so timing reveals neither which key nor how much
        matched."""
        if token is None:
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token.encode(), key)
        return matched

    @staticmethod
    def digest(token: str) -> str:
        """What may stay in memory in place of a key (rate-limit buckets)."""
        return hashlib.sha256(token.encode()).hexdigest()[:32]
