"""Bearer-token checking for both transports: the same rule and the same error everywhere."""

from __future__ import annotations

import hmac

from imgsim_server.errors import UnauthenticatedError


def check_bearer(header: str, token: str) -> None:
    """Accept `header` (an `authorization` value) if it is `Bearer TOKEN`; the scheme is
    case-insensitive (RFC 7235), the token compared in constant time. Raises
    UnauthenticatedError (gRPC UNAUTHENTICATED, HTTP 401) otherwise."""
    scheme, _, given = header.strip().partition(" ")
    if not scheme:
        raise UnauthenticatedError("missing 'authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise UnauthenticatedError("invalid bearer token")
