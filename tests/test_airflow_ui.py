"""The deploy DAG triggered the way a person does it: through the Airflow 3 UI's trigger form, in a real
browser (headless Debian chromium driven by Playwright; `make system-deps` installs it), on the session's
running Airflow (api-server, scheduler, dag-processor, triggerer) and local stack.

What the REST tests cannot show: the login page, the form the UI builds from the DAG's params (its
"Release version" number field, the logical date it pre-fills), the conf it sends, and the run page.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from devstack.airflow import USERNAME, AirflowClient
from tests.helpers import DEPLOY_LLM, UI_TIMEOUT_MS, RunningAirflow, chromium, golden, infer_llm, log_in, text_of

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps installs it)"),
]

# How the form shows its pre-filled logical date (locale en-US, the UI's default timezone UTC).
FORM_DATE = "%b %d, %Y %H:%M"


@pytest.fixture()
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.mark.timeout(600)
def test_the_ui_trigger_form_deploys_the_version_typed_in(running_airflow: RunningAirflow, browser: Browser,
                                                          tmp_path: Path) -> None:
    af, client = running_airflow, running_airflow.client
    v = af.next_version()
    af.publish(v)
    # The session's schedule is monthly and its first scheduled run is over (tests/conftest.py): nothing
    # else runs beside the one this form starts.
    client.wait_until_idle(DEPLOY_LLM)
    defaults = {name: p["value"] for name, p in client.request("GET", f"/dags/{DEPLOY_LLM}/details")["params"].items()}

    context = browser.new_context(viewport={"width": 1400, "height": 1800}, locale="en-US", timezone_id="UTC")
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        _log_in(page, af.server.url, af.server.password)

        page.get_by_test_id("trigger-dag-button").click()
        opened = datetime.now(UTC)
        form = page.get_by_role("dialog")
        expect(form).to_contain_text(f"Trigger Dag - {DEPLOY_LLM}")
        prefilled = form.get_by_test_id("datetime-input").inner_text().strip()
        version = form.get_by_role("spinbutton", name="Release version")
        expect(version).to_have_value("")  # the param's default, None: "the newest complete release"
        version.fill(str(v))
        version.press("Tab")  # as a person leaves the field: the number input commits its value on blur
        expect(version).to_have_value(str(v))
        form.screenshot(path=tmp_path / "trigger-form.png")
        clicked = datetime.now(UTC)
        form.get_by_test_id("trigger-dag-submit").click()

        # The UI opens the new run's page.
        page.wait_for_url(f"**/dags/{DEPLOY_LLM}/runs/**", timeout=UI_TIMEOUT_MS)
        run_id = unquote(page.url.split("/runs/", 1)[1].split("/", 1)[0])
        expect(page.get_by_text("Dag run has been successfully triggered.").first).to_be_visible()

        run = _the_run_triggered_from_the_ui(client, since=clicked)
        assert run["dag_run_id"] == run_id, (run, page.url)
        assert run["run_type"] == "manual" and run["triggering_user_name"] == USERNAME, run
        assert run["conf"]["version"] == v, run["conf"]
        # Every other param as the form left it: the DAG's defaults.
        left = {k: val for k, val in run["conf"].items() if k != "version"}
        assert left == {k: val for k, val in defaults.items() if k != "version"}, (run["conf"], defaults)
        # The form pre-fills the logical date with the moment it opened (to the second; shown to the minute).
        logical = datetime.fromisoformat(run["logical_date"])
        assert opened - timedelta(seconds=2) <= logical <= clicked, (logical, opened, clicked)
        assert logical.strftime(FORM_DATE) == prefilled, (run["logical_date"], prefilled)

        states = client.wait_for_run(DEPLOY_LLM, run_id)
        assert states["promote"] == "success" and states["announce"] == "success", states
        assert text_of(infer_llm(af.triton_url, v)) == golden(v)

        # The run page (still open, refreshing itself) shows the run and its outcome.
        header = page.get_by_test_id("header-card")
        expect(header.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
        expect(header.get_by_test_id("state-badge").first).to_have_text("Success", timeout=UI_TIMEOUT_MS)
        # Its task list can lag behind the header (a refresh from before the run ended): reload for the rest.
        page.reload()
        expect(page.get_by_role("link", name=DEPLOY_LLM, exact=True).first).to_be_visible()
        expect(header.get_by_test_id("state-badge").first).to_have_text("Success")
        for task in ("promote", "announce"):
            expect(_task_row(page, task).get_by_test_id("state-badge")).to_have_text("Success")
        page.screenshot(path=tmp_path / "run.png", full_page=True)
    finally:
        context.close()
    for shot in ("trigger-form.png", "run.png"):
        assert (tmp_path / shot).stat().st_size > 10_000, shot


def _log_in(page: Page, url: str, password: str) -> None:
    """Open the DAG's page: the UI sends the browser to its login page first (SimpleAuthManager)."""
    log_in(page, url, password, f"/dags/{DEPLOY_LLM}")
    expect(page.get_by_test_id("trigger-dag-button")).to_be_visible(timeout=UI_TIMEOUT_MS)


def _task_row(page: Page, task_id: str) -> Locator:
    """The run page's task-instance table row of ``task_id``."""
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=task_id, exact=True))


def _the_run_triggered_from_the_ui(client: AirflowClient, since: datetime) -> dict[str, Any]:
    runs = client.runs(DEPLOY_LLM, order_by="-run_after", limit="20")
    ours = [r for r in runs if r["triggered_by"] == "ui" and datetime.fromisoformat(r["run_after"]) >= since]
    assert len(ours) == 1, runs
    return dict(ours[0])
