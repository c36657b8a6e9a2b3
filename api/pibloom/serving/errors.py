"""The one error type the service raises, by kind; `pibloom.http.errors` maps kinds to HTTP in one place."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"  # loading, draining, overloaded, engine gone: retry (elsewhere) later
    INTERNAL = "internal"


class ServingError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> ServingError:
    return ServingError(ErrorKind.INVALID_REQUEST, message, param=param, code=code)


def unavailable(message: str, retry_after: int, *, code: str = "server_overloaded") -> ServingError:
    return ServingError(ErrorKind.UNAVAILABLE, message, code=code, retry_after=retry_after)
