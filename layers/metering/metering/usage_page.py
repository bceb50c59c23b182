"""The usage page the CRM embeds (issue 20): one HTML page with its stylesheet, scripts, message catalogues
and icon, served by UsageApi from this package on two routes without the JWT authorizer (`GET /usage-page` and
`GET /usage-page/{asset}`).

The page holds no data. It reads the Usage API with the customer token the CRM puts in its URL fragment, which
a browser never sends to a server, so no access log or function log sees it. Every file goes out with a
Content-Security-Policy that lets the page load from and call only its own origin and be framed only by the
CRM origins the stack names (none by default), and with `Cache-Control: no-cache` and a strong ETag: a
browser revalidates each view (a 304 without a body) and never runs files older than the deployment."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler import Response

from metering.api_access import NotFound
from metering.observability import MetricUnit, metrics
from metering.usage_api import problem

PAGE_FILES = Path(__file__).with_name("usage_page")
PAGE_ROUTE = "GET /usage-page"
ASSET_ROUTE = "GET /usage-page/{asset}"
INDEX = "index.html"
ACCOUNT_CLAIM_PLACEHOLDER = "{{ACCOUNT_CLAIM}}"
"""Where `index.html` names the claim that carries a customer token's account (the page reads its account
from the token it is given; the stack's `ApiAccountClaim` says which claim that is)."""
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
}
NO_FRAME_ANCESTORS = "'none'"


def content_security_policy(frame_ancestors: Sequence[str]) -> str:
    """Scripts, styles, images and requests from the page's own origin only; no plugin, base or form target;
    framed only by `frame_ancestors` (origins), by nobody without them."""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {' '.join(frame_ancestors) or NO_FRAME_ANCESTORS}",
        )
    )


@dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    body: str
    etag: str

    @classmethod
    def of(cls, path: Path, body: str) -> Asset:
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:32]
        return cls(CONTENT_TYPES[path.suffix], body, f'"{digest}"')


class UsagePage:
    """The page's files, read once per container at the first request for one of them."""

    def __init__(self, account_claim: str, frame_ancestors: Sequence[str], files: Path = PAGE_FILES) -> None:
        self.account_claim = account_claim
        self.files = files
        self.headers = {
            "content-security-policy": content_security_policy(frame_ancestors),
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-cache",
        }
        self._assets: dict[str, Asset] | None = None

    @staticmethod
    def serves(event: Mapping[str, Any]) -> bool:
        """Whether the gateway routed this request to the page (its route key, chosen by API Gateway)."""
        return event.get("routeKey") in (PAGE_ROUTE, ASSET_ROUTE)

    def answer(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The file the request names: 200, 304 when the browser has it already, 404 for any other name. The
        page's own address is `/usage-page/` (its files are relative to it): API Gateway routes
        `/usage-page` there too, and gets a redirect that keeps the fragment."""
        metrics.add_metric(name="UsagePageRequests", unit=MetricUnit.Count, value=1)
        if event["routeKey"] == PAGE_ROUTE:
            if not str(event.get("rawPath", "")).endswith("/"):
                return self._redirect_to_folder(str(event.get("rawQueryString") or ""))
            name = INDEX
        else:
            name = (event.get("pathParameters") or {}).get("asset", "")
        asset = self.assets.get(name)
        if asset is None:
            return _payload(problem(NotFound("the usage page has no such file")))
        headers = {**self.headers, "etag": asset.etag}
        if asset.etag in _entity_tags((event.get("headers") or {}).get("if-none-match", "")):
            return {"statusCode": 304, "headers": headers, "body": "", "isBase64Encoded": False}
        return {
            "statusCode": 200,
            "headers": {**headers, "content-type": asset.content_type},
            "body": asset.body,
            "isBase64Encoded": False,
        }

    @property
    def assets(self) -> dict[str, Asset]:
        if self._assets is None:
            self._assets = self._read_assets()
        return self._assets

    def _read_assets(self) -> dict[str, Asset]:
        assets = {}
        for path in sorted(self.files.iterdir()):
            if path.suffix not in CONTENT_TYPES:
                continue
            body = path.read_text(encoding="utf-8")
            if path.name == INDEX:
                body = body.replace(ACCOUNT_CLAIM_PLACEHOLDER, html.escape(self.account_claim, quote=True))
            assets[path.name] = Asset.of(path, body)
        return assets

    def _redirect_to_folder(self, query: str) -> dict[str, Any]:
        location = "usage-page/" + (f"?{query}" if query else "")  # relative: kept under any base path
        return {
            "statusCode": 308,
            "headers": {**self.headers, "location": location},
            "body": "",
            "isBase64Encoded": False,
        }


def _entity_tags(if_none_match: str) -> set[str]:
    """The tags of an If-None-Match header, weak ones compared as strong (RFC 9110 weak comparison)."""
    return {tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()}


def _payload(response: Response[str]) -> dict[str, Any]:
    """The API's problem response as payload 2.0 returns it."""
    return {
        "statusCode": response.status_code,
        "headers": {name.lower(): str(value) for name, value in response.headers.items()},
        "body": response.body,
        "isBase64Encoded": False,
    }
