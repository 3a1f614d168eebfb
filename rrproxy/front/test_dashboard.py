from __future__ import annotations

import re

from .dashboard import PAGE_HEADERS, dashboard_asset


def test_the_page_and_its_files_are_served_for_get_only() -> None:
    page = dashboard_asset(b"GET", b"/")
    assert page is not None and page.content_type.startswith("text/html")
    assert dashboard_asset(b"GET", b"/?x=1") == page
    script = dashboard_asset(b"GET", b"/dashboard.js")
    assert script is not None and script.content_type.startswith("text/javascript")
    assert dashboard_asset(b"GET", b"/dashboard.css") is not None
    # Everything else is data or an action: the token check decides.
    for method, target in ((b"POST", b"/"), (b"GET", b"/status"), (b"GET", b"/metrics"),
                           (b"GET", b"/../status"), (b"HEAD", b"/")):  # fmt: skip
        assert dashboard_asset(method, target) is None


def test_the_page_works_under_its_own_content_security_policy() -> None:
    # script-src 'self' and style-src 'self' forbid inline code: none may be there.
    page = dashboard_asset(b"GET", b"/")
    assert page is not None
    html = page.body.decode()
    assert "script-src 'self'" in PAGE_HEADERS and "frame-ancestors 'none'" in PAGE_HEADERS
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*(?!</script>)\S", html)  # no inline body
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "<style" not in html
    # No third-party resource: it must work offline.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_the_script_never_puts_data_into_html_or_the_token_into_a_url() -> None:
    asset = dashboard_asset(b"GET", b"/dashboard.js")
    assert asset is not None
    script = asset.body.decode()
    # Worker exit reasons and addresses are shown with textContent, never parsed as HTML.
    assert "innerHTML" not in script and "outerHTML" not in script
    assert "document.write" not in script and "eval(" not in script
    assert "Authorization" in script and "sessionStorage" in script
    assert "?token" not in script and "&token" not in script and "document.cookie" not in script
