"""The local issuer of `metering token` and `metering serve` (an RSA key in a file, access tokens shaped like
Cognito's), and the checks of API Gateway's JWT authorizer (the route's scopes are `serving`'s)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from jwt.types import Options
from jwt.utils import base64url_encode, to_base64url_uint

ISSUER = "https://metering.local/issuer"
"""The `iss` of every local token; the local counterpart of the template's `ApiIssuer`."""
AUDIENCE = "metering-usage-api"
"""The `aud` of every local token; the template's `ApiAudience` defaults to it."""
ACCOUNT_CLAIM = "account_id"
"""The claim naming a customer token's account (the template's default for its account-claim parameter)."""
CUSTOMER_SCOPE = "metering/usage.read"
STAFF_SCOPE = "metering/usage.read.all"
DEFAULT_LIFETIME_SECONDS = 3600
ACCEPTED_ALGORITHMS = ("RS256", "RS384", "RS512")
"""API Gateway's JWT authorizers verify RSA signatures only."""


class Unauthorized(Exception):
    """API Gateway answers 401 without invoking the function; the message says why (for the server's log)."""


def issuer_key(path: Path) -> rsa.RSAPrivateKey:
    """The PEM key at `path`, created there with mode 0600 if the file does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SystemExit(f"{path}: not an RSA private key (API Gateway's JWT authorizers verify RSA only)")
    return key


def key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint: the `kid` a JWKS would publish it under."""
    numbers = public_key.public_numbers()
    e, n = (to_base64url_uint(number).decode() for number in (numbers.e, numbers.n))
    members = json.dumps({"e": e, "kty": "RSA", "n": n}, separators=(",", ":"), sort_keys=True)
    return base64url_encode(hashlib.sha256(members.encode()).digest()).decode()


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
    scope = STAFF_SCOPE if request.account_id is None else CUSTOMER_SCOPE
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ISSUER}/users/{request.account_id or 'staff'}")),
        "aud": request.audience,
        "iat": issued_at,
        "exp": issued_at + request.expires_in,
        "scope": scope if request.scope is None else request.scope,
        "jti": str(uuid.uuid4()),
        **({} if request.account_id is None else {ACCOUNT_CLAIM: request.account_id}),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key.public_key())})


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

    @classmethod
    def of(cls, key: rsa.RSAPrivateKey) -> LocalAuthorizer:
        return cls(key.public_key())

    def authorize(self, authorization_header: str | None) -> Authorization:
        """The token's claims if API Gateway would let the request through, else `Unauthorized`: a token in
        the header (bare or after `Bearer `), an RSA signature by a key of the JWKS (`kid`), `iss`, `aud` (or
        `client_id` when there is no `aud`), `exp` after now, `nbf` and `iat` not after now."""
        header = (authorization_header or "").strip()
        scheme, _, rest = header.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else header
        if not token:
            raise Unauthorized("no token in the Authorization header")
        checks: Options = {"require": ["exp", "iss"], "verify_aud": False}  # aud: below, as API Gateway does
        try:
            if jwt.get_unverified_header(token).get("kid") != key_id(self.public_key):
                raise Unauthorized("the token's kid names no key of the issuer")
            claims = jwt.decode(token, self.public_key, ACCEPTED_ALGORITHMS, checks, issuer=ISSUER, leeway=0)
        except jwt.PyJWTError as exc:
            raise Unauthorized(str(exc)) from exc
        audience = claims.get("aud", claims.get("client_id"))  # a string or a list of strings
        if not (AUDIENCE in audience if isinstance(audience, list) else audience == AUDIENCE):
            raise Unauthorized("the token's audience is not the API's")
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else []
        return Authorization({name: _claim_text(value) for name, value in claims.items()}, scopes)


def _claim_text(value: Any) -> str:
    """A claim as API Gateway hands it to the integration: every value a string, a list as `[a b]`, a boolean
    or an object as JSON."""
    if isinstance(value, list):
        return "[" + " ".join(map(_claim_text, value)) + "]"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, bool | dict) else str(value)
