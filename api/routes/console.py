"""The web console (``/console``), its static files, and ``/docs`` and ``/redoc`` served without any outside resource.

Everything a browser loads from these pages comes from this api: the console is plain HTML, CSS and JavaScript
under ``api/console/``; Swagger UI and ReDoc are vendored there (``api/console/vendor/``, with their licences). The
pages hold no secret: the console asks for an API key and keeps it in the tab's ``sessionStorage``; its event
stream is opened with a ticket (``POST /ws-tickets``). :class:`api.guard.Guard` lets these paths through without a
key (:data:`PATHS`).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

#: The console's files and the vendored Swagger UI.
ROOT = Path(__file__).resolve().parent.parent / "console"
ASSETS = "/console/assets"
SWAGGER = f"{ASSETS}/vendor/swagger-ui"
REDOC = f"{ASSETS}/vendor/redoc"
#: Paths the guard lets through without a key: the pages and their static files.
PATHS = re.compile(r"^/$|^/console/?$|^/console/assets/[A-Za-z0-9_./-]+$|^/docs$|^/redoc$")
#: The console's page may load nothing but this api's own files and talk to nothing else.
CONSOLE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def home() -> RedirectResponse:
    """The api's address opens the console."""
    return RedirectResponse("/console", status_code=307)


@router.get("/console")
async def console() -> FileResponse:
    """The console's single page; it loads only ``/console/assets/…`` and calls only this api."""
    return FileResponse(
        ROOT / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": CONSOLE_POLICY, "Cache-Control": "no-cache"},
    )


@router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, from the vendored files: it renders with no network beyond this api."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Conveyor - API docs",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.svg",
        # No online validator: Swagger UI's badge (in the layouts that show one) asks validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    """ReDoc for ``/openapi.json``, from the vendored file and without Google Fonts: it renders offline too."""
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="Conveyor - API reference",
        redoc_js_url=f"{REDOC}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.svg",
        with_google_fonts=False,
    )


def install(app: FastAPI) -> None:
    """Serve the console, its files, ``/docs`` and ``/redoc`` on ``app`` (made with ``docs_url=redoc_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=ROOT), name="console-assets")
