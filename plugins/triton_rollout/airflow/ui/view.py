"""The Triton models view: a FastAPI app the api-server mounts at ``/triton-models`` (``URL_PREFIX``).

Routes: ``/`` the page (server-rendered HTML, Jinja2 with autoescape: every value from S3, Triton or the
database is escaped), ``/fleet.json`` the same records as JSON, ``/icon.svg`` the navigation icon.

Auth. Airflow 3.3 does not authenticate plugin apps: it mounts them with ``app.mount()``, which inherits
none of the core API's router dependencies, so without a check of its own every route here would be open
to anonymous callers (stated in the plugins docs since apache/airflow#72655). The page and the JSON
therefore resolve the user with the api-server's own ``airflow.api_fastapi.core_api.security.get_user``:
the ``Authorization: Bearer`` token, else the UI's ``_token`` JWT cookie (which the browser sends to this
same-origin iframe), validated by the configured auth manager. Nobody signed in: the page redirects to the
auth manager's login page (JSON: 401). Signed in: each model is shown only if the user may read its
deploy DAG's runs and XComs (``is_authorized_dag`` GET, RUN and XCOM), the permissions the Airflow UI asks
for the same facts; the count of hidden models is shown. The icon is public (a static image).

In the UI the page is an iframe (``external_views``, destination "nav") sandboxed with
``allow-scripts allow-same-origin allow-forms allow-downloads``: no top navigation, so a plain link to an
Airflow page would open the whole UI inside the frame. Links to Airflow pages carry ``data-ui-link``; a
small script follows them from the top document (same origin), and they stay plain links when the page
is opened on its own. A Content-Security-Policy with a per-response nonce allows only that script and
the page's own style, and ``frame-ancestors 'self'`` keeps other sites from framing it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from triton_rollout.airflow.ui import fleet as fleet_module
from triton_rollout.airflow.ui.fleet import Fleet, Problem

URL_PREFIX = "/triton-models"
# Relative to the UI's <base href> (the api-server's base URL), so the view also works under a path
# prefix. The trailing slash matters: the api-server's UI catch-all route answers "/triton-models".
HREF = URL_PREFIX.lstrip("/") + "/"
TEMPLATE = Path(__file__).with_name("page.html")
ICON = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#76b900"
stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M12 2 3 7v10l9 5 9-5V7z"/>
<path d="M3 7l9 5 9-5M12 12v10"/></svg>"""


@dataclass(frozen=True)
class Viewer:
    """The signed-in user and what they may read."""

    name: str
    may_read: Callable[[str], bool]  # dag_id -> allowed


class NotSignedIn(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


async def current_viewer(request: Request) -> Viewer:
    """The user of this request, as the core API resolves it (Bearer token, else the UI's JWT cookie)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
    from airflow.models.dag import DagModel
    from fastapi import HTTPException

    try:
        user = await get_user(request, None, await bearer_scheme(request))
    except HTTPException as exc:
        raise NotSignedIn(exc.status_code, str(exc.detail)) from exc
    manager = get_auth_manager()

    def may_read(dag_id: str) -> bool:
        details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
        return all(manager.is_authorized_dag(method="GET", access_entity=entity, details=details, user=user)
                   for entity in (DagAccessEntity.RUN, DagAccessEntity.XCOM))

    return Viewer(user.get_name(), may_read)


def load_fleet(viewer: Viewer) -> Fleet:
    """The records for ``viewer``: the configured models whose deploy DAG they may read."""
    try:
        models = fleet_module.configured_models()
    except Exception as exc:
        return Fleet(problem=Problem.of("models config", exc, "fix the models file the DAGs are built from "
                                                             "(its DAG import error names the field)"))
    allowed = [m for m in models if viewer.may_read(fleet_module.deploy_dag_id(m))]
    return fleet_module.gather_fleet(allowed, hidden=len(models) - len(allowed))


def create_app() -> FastAPI:
    # No OpenAPI docs: the api-server's /docs describes the core API; this app has one page and its JSON.
    app = FastAPI(title="Triton models", docs_url=None, redoc_url=None, openapi_url=None)
    render = _renderer()

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if request.url.path.endswith(".json"):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        from airflow.api_fastapi.app import get_auth_manager

        # Back here after signing in; a path, so a proxy's idea of the host does not matter.
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(get_auth_manager().get_url_login(next_url=here), status_code=303)

    @app.get("/", response_class=HTMLResponse)
    async def page(viewer: Viewer = Depends(current_viewer)) -> Response:  # noqa: B008 (FastAPI's idiom)
        fleet = await run_in_threadpool(load_fleet, viewer)  # blocking clients and the ORM, off the event loop
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render(fleet=fleet, viewer=viewer.name, nonce=nonce), headers=_headers(nonce))

    @app.get("/fleet.json")
    async def fleet_json(viewer: Viewer = Depends(current_viewer)) -> Response:  # noqa: B008
        fleet = await run_in_threadpool(load_fleet, viewer)
        return JSONResponse(jsonable_encoder(fleet), headers={"Cache-Control": "no-store"})

    @app.get("/icon.svg")
    async def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    return app


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    }


def _renderer() -> Callable[..., str]:
    import jinja2

    from triton_rollout.release.progress import human_bytes

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(human_bytes=human_bytes, when=when, duration=duration)
    template = env.get_template(TEMPLATE.name)
    return lambda **context: template.render(ui="../", **context)  # the page is at <base>/triton-models/


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    from triton_rollout.release.progress import human_seconds

    return human_seconds(seconds)

