"""Issue 15.7: /docs works offline: Swagger UI's assets come from the server itself, the page names no other host."""

from __future__ import annotations

import re
from typing import Any

import httpx

from prodai_cli.serving.docs import external_hosts, local_assets

# Every place an HTML page can make the browser load something: read independently of serving/docs.py.
LOADS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def test_docs_page_loads_only_assets_the_server_serves(clf_server: Any) -> None:
    docs = httpx.get(f"{clf_server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    loads = LOADS.findall(docs.text)
    assert loads, docs.text
    assert all(url.startswith("/") and not url.startswith("//") for url in loads), loads
    assert "http://" not in docs.text and "https://" not in docs.text, docs.text
    assert "/openapi.json" in docs.text
    for url in loads:
        asset = httpx.get(f"{clf_server.url}{url}", timeout=10)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    script = next(url for url in loads if url.endswith(".js"))
    assert "SwaggerUIBundle" in httpx.get(f"{clf_server.url}{script}", timeout=10).text
    oauth = httpx.get(f"{clf_server.url}/docs/oauth2-redirect", timeout=10)
    assert oauth.status_code == 200 and "https://" not in oauth.text


def test_redoc_sends_the_browser_to_the_offline_page(clf_server: Any) -> None:
    redoc = httpx.get(f"{clf_server.url}/redoc", timeout=10)
    assert redoc.status_code == 307 and redoc.headers["location"] == "/docs"


def test_the_docs_check_spots_a_cdn_page() -> None:
    # FastAPI's default /docs page (what the server served before): its script and style come from a CDN.
    from fastapi.openapi.docs import get_swagger_ui_html

    cdn_page = get_swagger_ui_html(openapi_url="/openapi.json", title="x").body.decode()
    assert external_hosts(cdn_page) == ["cdn.jsdelivr.net", "fastapi.tiangolo.com"]
    assert external_hosts('<img src="//evil.example/x.png"><div style="background: url(https://a.example/b)">') == [
        "a.example",
        "evil.example",
    ]
    assert local_assets('<script src="/docs/assets/a.js"></script><link href="/docs/assets/a.js">') == [
        "/docs/assets/a.js"
    ]
