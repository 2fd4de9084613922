"""Airflow plugin: the "Triton models" view (releases in S3, what Triton serves, the last deploys).

Registers a FastAPI app, mounted by the api-server at ``/triton-models``, and a top-level entry of the UI's
navigation that shows it inside the UI (an external view with a ``url_route``: the UI frames ``href`` at
``/plugin/triton-models``). Code and auth: ``triton_rollout/airflow/ui/`` (``view.py`` says how the page
is protected; plugin apps get no auth from Airflow).

Airflow imports every ``.py`` file of the plugins folder, in every component and in every task process
(the task runner loads plugins for their macros), so this module imports only the plugin base class: the
app, FastAPI and the view's dependencies are built on first use, which only the api-server (and
``airflow plugins``) makes. ``.airflowignore`` keeps the library package out of that scan.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

_apps: list[dict[str, Any]] = []


class TritonModelsPlugin(AirflowPlugin):
    name = "triton_models"
    external_views = [
        {
            "name": "Triton models",
            # Relative to the UI's base URL (its <base href>), so a path prefix in [api] base_url works.
            "href": "triton-models/",
            "icon": "triton-models/icon.svg",
            "url_route": "triton-models",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]

    @property  # type: ignore[override]
    def fastapi_apps(self) -> list[dict[str, Any]]:  # read by the api-server's init_plugins, on an instance
        if not _apps:
            from triton_rollout.airflow.ui.view import URL_PREFIX, create_app

            _apps.append({"app": create_app(), "url_prefix": URL_PREFIX, "name": "Triton models"})
        return _apps
