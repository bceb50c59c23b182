"""The local issuer (`metering_tools.tokens`): its key file, the tokens it mints, and the checks API Gateway's
JWT authorizer makes, each failure a refusal before the function runs."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from metering_tools import cli
from metering_tools.tokens import (
    ACCOUNT_CLAIM,
    AUDIENCE,
    CUSTOMER_SCOPE,
    ISSUER,
    STAFF_SCOPE,
    LocalAuthorizer,
    TokenRequest,
    Unauthorized,
    issuer_key,
    key_id,
    mint,
)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> rsa.RSAPrivateKey:
    return issuer_key(tmp_path_factory.mktemp("issuer") / "key.pem")


@pytest.fixture(scope="module")
def authorizer(key: rsa.RSAPrivateKey) -> LocalAuthorizer:
    return LocalAuthorizer.of(key)


def signed(key: rsa.RSAPrivateKey, claims: dict[str, Any], **headers: Any) -> str:
    """A token with exactly these claims, signed by `key` with the local issuer's key id unless overridden."""
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key.public_key()), **headers})


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "scope": CUSTOMER_SCOPE,
        ACCOUNT_CLAIM: "acc-1",
        **overrides,
    }


def refusal(authorizer: LocalAuthorizer, header: str | None) -> str:
    with pytest.raises(Unauthorized) as refused:
        authorizer.authorize(header)
    return str(refused.value)


# ---- the key file ----


def test_a_missing_key_file_is_created_private_and_read_back_as_the_same_key(tmp_path: Path) -> None:
    # Given no key file, in a folder that does not exist yet
    path = tmp_path / ".local" / "issuer.pem"

    # When the issuer's key is asked for twice
    created = issuer_key(path)
    read_back = issuer_key(path)

    # Then the file exists, readable by its owner only, and holds the same RSA key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text(encoding="ascii").startswith("-----BEGIN PRIVATE KEY-----")
    assert created.private_numbers() == read_back.private_numbers()
    assert created.key_size == 2048


def test_a_key_file_that_holds_no_rsa_key_is_refused_by_name(tmp_path: Path) -> None:
    # Given a key file with an elliptic-curve key (API Gateway verifies RSA signatures only)
    path = tmp_path / "ec.pem"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))

    # When it is read, then the command stops and names the file
    with pytest.raises(SystemExit, match="not an RSA private key"):
        issuer_key(path)


# ---- minted tokens ----


def test_a_customer_token_carries_the_claims_of_an_access_token_and_its_account(
    key: rsa.RSAPrivateKey,
) -> None:
    # Given a customer token for acc-42
    token = mint(key, TokenRequest("acc-42"))

    # When its header and claims are read without the authorizer
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})

    # Then it is RS256 with the key's thumbprint as kid, and it carries the access-token claims
    assert header == {"alg": "RS256", "kid": key_id(key.public_key()), "typ": "JWT"}
    assert set(claims) == {"iss", "aud", "sub", "iat", "exp", "scope", "jti", ACCOUNT_CLAIM}
    assert (claims["iss"], claims["aud"], claims["scope"]) == (ISSUER, AUDIENCE, CUSTOMER_SCOPE)
    assert claims[ACCOUNT_CLAIM] == "acc-42"
    assert claims["exp"] - claims["iat"] == 3600


def test_a_staff_token_names_no_account_and_two_tokens_are_never_the_same(key: rsa.RSAPrivateKey) -> None:
    # Given two staff tokens minted in the same second
    first, second = (
        jwt.decode(mint(key, TokenRequest(None), now=1_800_000_000), options={"verify_signature": False})
        for _ in range(2)
    )

    # Then they read every account, name none, and differ by their jti
    assert first["scope"] == STAFF_SCOPE
    assert ACCOUNT_CLAIM not in first
    assert first["sub"] == second["sub"]
    assert first["jti"] != second["jti"]


def test_the_token_command_prints_one_token_the_local_authorizer_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given no key file yet
    path = tmp_path / "issuer.pem"

    # When `metering token` mints a customer token with a scope of the test's choosing
    assert cli.main(["token", "--issuer-key", str(path), "--account", "acc-7", "--scope", "a b"]) == 0
    token = capsys.readouterr().out

    # Then it printed one line, a token for acc-7 with exactly that scope, signed by the key it created
    assert token.endswith("\n")
    assert token.count("\n") == 1
    authorization = LocalAuthorizer.of(issuer_key(path)).authorize(f"Bearer {token.strip()}")
    assert authorization.claims[ACCOUNT_CLAIM] == "acc-7"
    assert authorization.scopes == ["a", "b"]


# ---- the authorizer's checks ----


def test_a_valid_token_passes_with_its_claims_as_strings_and_its_scopes_as_a_list(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer
) -> None:
    # Given a staff token with two scopes and a list-valued claim
    claims = valid_claims(scope=f"{STAFF_SCOPE} openid", groups=["billing", "staff"], email_verified=True)

    # When the authorizer reads it
    authorization = authorizer.authorize(f"Bearer {signed(key, claims)}")

    # Then API Gateway's shape comes out: every claim a string, lists as "[a b]", scopes split
    assert authorization.scopes == [STAFF_SCOPE, "openid"]
    assert authorization.claims["exp"] == str(claims["exp"])
    assert authorization.claims["groups"] == "[billing staff]"
    assert authorization.claims["email_verified"] == "true"
    assert authorization.as_event() == {
        "jwt": {"claims": authorization.claims, "scopes": [STAFF_SCOPE, "openid"]}
    }


@pytest.mark.parametrize("prefix", ["Bearer ", "bearer ", ""])
def test_the_token_may_come_bare_or_after_bearer(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, prefix: str
) -> None:
    # Given a valid token, with or without the scheme, as API Gateway's identity source allows
    header = prefix + signed(key, valid_claims())

    # When it is checked, then it passes
    assert authorizer.authorize(header).claims[ACCOUNT_CLAIM] == "acc-1"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   "])
def test_a_request_without_a_token_is_refused(authorizer: LocalAuthorizer, header: str | None) -> None:
    # Given no token, when the authorizer checks the request, then it is refused
    assert refusal(authorizer, header) == "no token in the Authorization header"


def test_an_expired_token_is_refused(key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer) -> None:
    # Given a token that expired a second ago
    token = mint(key, TokenRequest("acc-1", expires_in=-1))

    # When it is checked, then it is refused for its expiry
    assert "expired" in refusal(authorizer, f"Bearer {token}")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_valid_yet_is_refused(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, claim: str
) -> None:
    # Given a token whose nbf or iat lies a minute ahead
    token = signed(key, valid_claims(**{claim: int(time.time()) + 60}))

    # When it is checked, then it is refused
    assert "not yet valid" in refusal(authorizer, token)


@pytest.mark.parametrize("claim", ["exp", "iss"])
def test_a_token_without_exp_or_iss_is_refused(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, claim: str
) -> None:
    # Given a token without the claim
    claims = valid_claims()
    del claims[claim]

    # When it is checked, then it is refused, naming the claim
    assert claim in refusal(authorizer, signed(key, claims))


def test_a_token_of_another_issuer_is_refused(key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer) -> None:
    # Given a token signed by the key but naming another issuer
    token = signed(key, valid_claims(iss="https://cognito-idp.eu-central-1.amazonaws.com/eu-central-1_x"))

    # When it is checked, then it is refused
    assert "issuer" in refusal(authorizer, token).lower()


@pytest.mark.parametrize(
    "audience_claims",
    [
        {"aud": "another-api"},
        {"aud": ["another-api", "a-third-api"]},
        {"aud": None, "client_id": "another-api"},
        {"aud": None},
        {"aud": "another-api", "client_id": AUDIENCE},
    ],
    ids=["other aud", "other aud list", "other client_id", "neither", "aud wins over client_id"],
)
def test_a_token_for_another_audience_is_refused(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, audience_claims: dict[str, Any]
) -> None:
    # Given a token whose aud (or, without aud, client_id) is not the API's
    claims = {name: value for name, value in valid_claims(**audience_claims).items() if value is not None}

    # When it is checked, then it is refused for its audience
    assert refusal(authorizer, signed(key, claims)) == "the token's audience is not the API's"


@pytest.mark.parametrize(
    "audience_claims",
    [{"aud": ["another-api", AUDIENCE]}, {"aud": None, "client_id": AUDIENCE}],
    ids=["aud list", "client_id without aud (Cognito access token)"],
)
def test_a_token_whose_audience_names_the_api_passes(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, audience_claims: dict[str, Any]
) -> None:
    # Given a token naming the API among its audiences, or as its client without an aud
    claims = {name: value for name, value in valid_claims(**audience_claims).items() if value is not None}

    # When it is checked, then it passes
    assert authorizer.authorize(signed(key, claims)).claims[ACCOUNT_CLAIM] == "acc-1"


def test_a_token_signed_by_another_key_is_refused_even_under_the_issuers_kid(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer
) -> None:
    # Given a token with the issuer's kid but signed by a key of someone else
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = signed(stranger, valid_claims(), kid=key_id(key.public_key()))

    # When it is checked, then its signature fails
    assert "signature" in refusal(authorizer, token).lower()


def test_a_token_under_a_kid_the_issuer_does_not_publish_is_refused(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer
) -> None:
    # Given a token signed by the issuer's key under another kid
    token = signed(key, valid_claims(), kid="another-key")

    # When it is checked, then it is refused for its kid
    assert refusal(authorizer, token) == "the token's kid names no key of the issuer"


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_a_token_that_is_not_rsa_signed_is_refused(
    key: rsa.RSAPrivateKey, authorizer: LocalAuthorizer, algorithm: str
) -> None:
    # Given tokens with a symmetric signature or none, under the issuer's kid
    secret = "a-shared-secret-of-at-least-32-bytes!" if algorithm == "HS256" else ""
    token = jwt.encode(valid_claims(), secret, algorithm=algorithm, headers={"kid": key_id(key.public_key())})

    # When they are checked, then they are refused
    assert refusal(authorizer, token) == "The specified alg value is not allowed"


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30."])
def test_a_malformed_token_is_refused(authorizer: LocalAuthorizer, garbage: str) -> None:
    # Given something that is not a signed JWT, when it is checked, then it is refused
    refusal(authorizer, f"Bearer {garbage}")
