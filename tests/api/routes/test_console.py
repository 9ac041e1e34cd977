"""The console's page and files and ``/docs`` on the in-process api: served without a key, nothing from elsewhere."""

from __future__ import annotations

import re

import pytest

from tests.inprocess import Api

pytestmark = pytest.mark.anyio


async def test_the_api_address_opens_the_console(api: Api) -> None:
    async with api.anonymous() as anonymous:
        response = await anonymous.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/console"


async def test_the_console_and_its_files_need_no_key_and_load_only_from_the_api(api: Api) -> None:
    async with api.anonymous() as anonymous:
        page = await anonymous.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert loaded and all(url.startswith("/") and not url.startswith("//") for url in loaded), loaded
        for url in loaded:
            assert (await anonymous.get(url)).status_code == 200, url


async def test_console_paths_reveal_nothing_else(api: Api) -> None:
    async with api.anonymous() as anonymous:
        assert (await anonymous.get("/console/assets/../main.py")).status_code in (401, 404)
        assert (await anonymous.get("/console/assets/nothing.js")).status_code == 404
        assert (await anonymous.get("/jobs")).status_code == 401


async def test_docs_use_the_vendored_swagger_ui(api: Api) -> None:
    async with api.anonymous() as anonymous:
        page = await anonymous.get("/docs")
        assert page.status_code == 200
        loaded = re.findall(r"(?:src|href|url)\s*[=:]\s*['\"]([^'\"]+)['\"]", page.text)
        assert "/console/assets/vendor/swagger-ui/swagger-ui-bundle.js" in loaded, loaded
        assert not [url for url in loaded if "://" in url], loaded
        assert '"validatorUrl": null' in page.text, "Swagger UI would ask validator.swagger.io about the schema"
        script = await anonymous.get("/console/assets/vendor/swagger-ui/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 500_000
        assert (await anonymous.get("/console/assets/vendor/swagger-ui/LICENSE")).status_code == 200


async def test_redoc_uses_the_vendored_bundle_without_google_fonts(api: Api) -> None:
    async with api.anonymous() as anonymous:
        page = await anonymous.get("/redoc")
        assert page.status_code == 200
        assert "/console/assets/vendor/redoc/redoc.standalone.js" in page.text
        assert "://" not in page.text.replace("http://www.w3.org", ""), page.text
        bundle = await anonymous.get("/console/assets/vendor/redoc/redoc.standalone.js")
        assert bundle.status_code == 200 and b"cdn.redoc.ly" not in bundle.content
