"""The Triton models view (plugins/triton_models_plugin.py) inside the running Airflow's UI, in a real browser
(headless Debian chromium through Playwright, as tests/test_airflow_ui.py drives it), checked against what
Triton, S3 and the REST API say.

A person signs in, opens "Triton models" from the UI's navigation, reads the serving version, its state,
the releases and the last deploys, and follows a deploy's link to its run page. ``SAVE_SCREENSHOTS=1``
also writes the screenshot the README shows (docs/triton-models-view.png).
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from playwright.sync_api import Browser, Page, expect
from triton_rollout.release.progress import human_bytes

from devstack import demo_models
from tests.helpers import (
    DEPLOY_LLM,
    LLM,
    ROOT,
    UI_TIMEOUT_MS,
    RunningAirflow,
    chromium,
    log_in,
    post,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make system-deps)"),
]

VIEWPORT = {"width": 1440, "height": 1100}
SCREENSHOT = ROOT / "docs" / "triton-models-view.png"


@pytest.fixture()
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.mark.timeout(600)
def test_the_triton_models_view_shows_what_serves_and_links_the_deploys(running_airflow: RunningAirflow,
                                                                        browser: Browser, tmp_path: Path) -> None:
    af, client = running_airflow, running_airflow.client
    client.wait_until_idle(DEPLOY_LLM)
    deployed = af.next_version()
    af.publish(deployed)
    run_id, states = af.deploy({"version": deployed})
    assert states["promote"] == "success", states
    newer = deployed + 1
    af.publish(newer)  # published, not deployed: the view lists it and says it is not served yet

    # What the others say: Triton (the version that answers), the REST API (what promote recorded), S3's
    # source folders (the sizes).
    answered = int(post(f"{af.triton_url}/v2/models/ensemble/generate",
                        {"text_input": "the ", "max_tokens": 4})["model_version"])
    assert answered == deployed
    recorded = _xcom(client, run_id, "promote", "result")
    assert recorded["promoted"] == deployed, recorded
    sizes = {v: _source_bytes(af.work, v) for v in (deployed, newer)}

    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        log_in(page, af.server.url, af.server.password, "/")
        page.get_by_role("link", name="Triton models").click()  # the entry in the UI's navigation
        page.wait_for_url("**/plugin/triton-models**", timeout=UI_TIMEOUT_MS)
        frame = page.frame_locator('iframe[title="Triton models"]')
        llm = frame.locator(f'[data-testid="model"][data-model="{LLM}"]')
        expect(llm).to_be_visible(timeout=UI_TIMEOUT_MS)

        names = frame.locator('[data-testid="model"]').evaluate_all("els => els.map(e => e.dataset.model)")
        assert names == [LLM, demo_models.TENSOR_MODEL], names  # the models of dags/models.yaml, in its order
        expect(llm.get_by_test_id("serving-version")).to_have_text(f"v{answered}")
        expect(llm.get_by_test_id("ready")).to_have_attribute("data-ready", "true")
        expect(llm.get_by_test_id("promoted")).to_have_text(f"v{recorded['promoted']}")
        previous = recorded["previous"]
        expect(llm.get_by_test_id("previous")).to_have_text(f"v{previous}" if previous is not None else "\N{EN DASH}")
        expect(llm.get_by_test_id("newest-release")).to_have_text(f"v{newer}")
        expect(llm.get_by_test_id("note").filter(has_text=f"v{newer} is the newest complete release")).to_have_count(1)
        endpoints = llm.get_by_test_id("endpoint").all_inner_texts()
        assert f"POST {af.triton_url}/v2/models/ensemble/versions/{deployed}/infer" in endpoints, endpoints

        for version, size in sizes.items():
            row = llm.locator(f'[data-testid="release"][data-version="{version}"]')
            expect(row.get_by_test_id("kind")).to_have_text("engine")
            expect(row.get_by_test_id("size")).to_have_attribute("data-bytes", str(size))
            expect(row.get_by_test_id("size")).to_have_text(human_bytes(size))
        deploy_row = llm.locator(f'[data-testid="deploy"][data-run-id="{run_id}"]')
        expect(deploy_row.get_by_test_id("outcome")).to_contain_text(f"promoted v{deployed}")
        expect(llm.get_by_test_id("problem")).to_have_count(0)

        png = page.screenshot()
        (tmp_path / "view.png").write_bytes(png)
        _check_screenshot(context.new_page(), png, [
            # Above the fold whatever the history's length (the page scrolls inside its frame).
            frame.locator("h1"), llm.get_by_test_id("serving-version"), llm.get_by_test_id("ready"),
            llm.get_by_test_id("releases")])
        if os.environ.get("SAVE_SCREENSHOTS") == "1":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            SCREENSHOT.write_bytes(png)

        # The deploy's link opens its run page in the UI itself (not the UI inside the view's frame).
        deploy_row.get_by_role("link", name=run_id).click()
        page.wait_for_url(f"**/dags/{DEPLOY_LLM}/runs/**", timeout=UI_TIMEOUT_MS)
        assert unquote(page.url.split("/runs/", 1)[1].split("/", 1)[0]) == run_id, page.url
        assert "/plugin/" not in page.url, page.url
        header = page.get_by_test_id("header-card")
        expect(header.get_by_role("heading", name=run_id, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(header.get_by_test_id("state-badge").first).to_have_text("Success")
    finally:
        context.close()


def _xcom(client: Any, run_id: str, task_id: str, key: str) -> dict[str, Any]:
    entry = client.request("GET", f"/dags/{DEPLOY_LLM}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
                                  f"/xcomEntries/{key}?deserialize=true&stringify=false")
    return dict(entry["value"])


def _source_bytes(work: Path, version: int) -> int:
    """The size of the release folder RunningAirflow.publish wrote and published (what its manifest lists)."""
    folder = work / LLM / f"{version}-good"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _check_screenshot(blank: Page, png: bytes, elements: list[Any]) -> None:
    """A PNG of the whole viewport, in which each element's box lies and shows something (not a blank area)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"]), (width, height)
    src = "data:image/png;base64," + base64.b64encode(png).decode()
    for element in elements:
        box = element.bounding_box()  # relative to the main frame's viewport, frames included
        assert box is not None and box["width"] > 0 and box["height"] > 0, element
        assert box["x"] >= 0 and box["x"] + box["width"] <= width, (element, box)
        assert box["y"] >= 0 and box["y"] + box["height"] <= height, (element, box)
        # The browser decodes the screenshot; count the pixels in the box that differ from its first one.
        differing = blank.evaluate("""async ([src, b]) => {
            const img = new Image(); img.src = src; await img.decode();
            const c = document.createElement("canvas"); c.width = img.width; c.height = img.height;
            const g = c.getContext("2d"); g.drawImage(img, 0, 0);
            const d = g.getImageData(Math.floor(b.x), Math.floor(b.y), Math.ceil(b.width), Math.ceil(b.height)).data;
            let n = 0;
            for (let i = 4; i < d.length; i += 4) {
              if (Math.abs(d[i] - d[0]) + Math.abs(d[i + 1] - d[1]) + Math.abs(d[i + 2] - d[2]) > 60) n++;
            }
            return n;
        }""", [src, box])
        assert differing > 20, (element, box, differing)
