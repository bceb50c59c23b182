"""The local issuer of `metering token` and `metering serve`: an RSA signing key in a file, access tokens
shaped like a Cognito or OIDC provider's, and the checks API Gateway's JWT authorizer makes of a token before
it invokes the Usage API (the route's scopes are `metering_tools.api_routes`'). The handler then sees the
claims as API Gateway hands them over."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://metering.local/issuer"
"""The `iss` of every local token; the local counterpart of the template's `ApiIssuer`."""
AUDIENCE = "metering-usage-api"
"""The `aud` of every local token; the template's `ApiAudience` defaults to it."""
ACCOUNT_CLAIM = "account_id"
"""The claim naming a customer token's account (the template's default for its account-claim parameter)."""
CUSTOMER_SCOPE = "metering/usage.read"
STAFF_SCOPE = "metering/usage.read.all"
DEFAULT_LIFETIME_SECONDS = 3600
ALGORITHM = "RS256"
"""API Gateway's JWT authorizers verify RSA signatures only."""
ACCEPTED_ALGORITHMS = ("RS256", "RS384", "RS512")
KEY_BITS = 2048
KEY_FILE_MODE = 0o600


class Unauthorized(Exception):
    """API Gateway answers 401 without invoking the function; the message says why (for the server's log)."""


def issuer_key(path: Path) -> rsa.RSAPrivateKey:
    """The issuer's signing key from `path` (PEM), created there with mode 0600 if the file does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        return _read_key(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return key


def _read_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit(f"{path}: not an RSA private key (API Gateway's JWT authorizers verify RSA only)")
    return key


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint: the `kid` a JWKS would publish it under."""
    numbers = public_key.public_numbers()
    members = {"e": _base64url_uint(numbers.e), "kty": "RSA", "n": _base64url_uint(numbers.n)}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _base64url_uint(value: int) -> str:
    big_endian = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(big_endian).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Who the token is for; `scope` and `audience` replace the defaults (so tests can make wrong tokens)."""

    account_id: str | None
    """None: a staff token for every account."""
    expires_in: int = DEFAULT_LIFETIME_SECONDS
    scope: str | None = None
    audience: str = AUDIENCE


def mint(key: rsa.RSAPrivateKey, request: TokenRequest, now: float | None = None) -> str:
    """An access token from the local issuer, with the claims a Cognito or OIDC access token carries."""
    issued_at = int(time.time() if now is None else now)
    subject = request.account_id or "staff"
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ISSUER}/users/{subject}")),
        "aud": request.audience,
        "iat": issued_at,
        "exp": issued_at + request.expires_in,
        "scope": request.scope
        if request.scope is not None
        else (STAFF_SCOPE if request.account_id is None else CUSTOMER_SCOPE),
        "jti": str(uuid.uuid4()),
    }
    if request.account_id is not None:
        claims[ACCOUNT_CLAIM] = request.account_id
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key.public_key())})


@dataclass(frozen=True, slots=True)
class Authorization:
    """What API Gateway passes the integration of an authorized request (`requestContext.authorizer.jwt`)."""

    claims: dict[str, str]
    scopes: list[str]

    def as_event(self) -> dict[str, Any]:
        return {"jwt": {"claims": self.claims, "scopes": self.scopes}}


@dataclass(frozen=True, slots=True)
class LocalAuthorizer:
    """The JWT authorizer of the Usage API, with the local issuer's public key as its whole JWKS."""

    public_key: rsa.RSAPublicKey
    issuer: str = ISSUER
    audience: str = AUDIENCE

    @classmethod
    def of(cls, key: rsa.RSAPrivateKey) -> LocalAuthorizer:
        return cls(key.public_key())

    def authorize(self, authorization_header: str | None) -> Authorization:
        """The token's claims if API Gateway would let the request through, else `Unauthorized`: a token in
        the header (bare or after `Bearer `), an RSA signature by a key of the JWKS (`kid`), `iss`, `aud` (or
        `client_id` when there is no `aud`), `exp` after now, `nbf` and `iat` not after now."""
        token = _bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
            if header.get("kid") != key_id(self.public_key):
                raise Unauthorized("the token's kid names no key of the issuer")
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=list(ACCEPTED_ALGORITHMS),
                issuer=self.issuer,
                options={"require": ["exp", "iss"], "verify_aud": False},
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(str(exc)) from exc
        if not self._for_this_api(claims):
            raise Unauthorized("the token's audience is not the API's")
        scope = claims.get("scope")
        return Authorization(
            claims={name: _claim_text(value) for name, value in claims.items()},
            scopes=scope.split() if isinstance(scope, str) else [],
        )

    def _for_this_api(self, claims: Mapping[str, Any]) -> bool:
        """API Gateway reads `aud` (a string or a list) and, only when a token has none, `client_id`."""
        audience = claims.get("aud", claims.get("client_id"))
        if isinstance(audience, list):
            return self.audience in audience
        return bool(audience == self.audience)


def _bearer_token(authorization_header: str | None) -> str:
    value = (authorization_header or "").strip()
    scheme, _, rest = value.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else value
    if not token:
        raise Unauthorized("no token in the Authorization header")
    return token


def _claim_text(value: Any) -> str:
    """A claim as API Gateway hands it to the integration: every value a string, a list as `[a b]`."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
