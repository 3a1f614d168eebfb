"""The live dashboard's page: plain HTML, CSS and JavaScript shipped as package data
(no CDN, no build step, so it works offline), served by the admin interface at /.

The page itself holds no data and so needs no token. Everything it shows comes from
/status, asked for with `Authorization: Bearer TOKEN`; the token reaches the page in
the URL's fragment (`/#token=...`), which browsers never send to the server, as
Jupyter's and Grafana's one-time links do. The headers forbid framing (clickjacking),
inline scripts and every origin but the admin's own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

#: path -> (file in dashboard_assets/, content type)
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Headers of the page and its assets.
PAGE_HEADERS = (
    f"content-security-policy: {_CSP}\r\n"
    "x-frame-options: DENY\r\n"
    "cache-control: no-store\r\n"
    "x-content-type-options: nosniff\r\n"
    "referrer-policy: no-referrer\r\n"
)
#: Headers of every data answer (never cached: it is live, and it is private).
DATA_HEADERS = "cache-control: no-store\r\nx-content-type-options: nosniff\r\n"


@dataclass(frozen=True)
class Asset:
    """One file of the page, read once from the package and kept."""

    body: bytes
    content_type: str


@functools.cache
def _load(name: str, content_type: str) -> Asset:
    data = resources.files(__package__).joinpath("dashboard_assets", name).read_bytes()
    return Asset(data, content_type)


def dashboard_asset(method: bytes, target: bytes) -> Asset | None:
    """The page or one of its files for a GET of it; None for anything else (the
    data endpoints, which need the token)."""
    if method != b"GET":
        return None
    path = urlsplit(target.decode("latin-1")).path
    found = _ASSETS.get(path)
    return None if found is None else _load(*found)
