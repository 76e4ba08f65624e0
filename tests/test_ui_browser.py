"""The Airflow UI as a person uses it: Chromium, driven by Playwright, against a real Airflow.

The trigger form of ``cvat_retrain`` and the CVAT connection form are built in the browser from
the DAG's params and the provider's metadata; only a browser shows whether they can be used. The
servers (``airflow_stack``: api-server, scheduler, dag-processor on loopback) start once for this
module. Text is typed key by key at a person's pace, because the UI's editors react to each key
(an array editor that reformatted mid-typing once turned ``[12, 13]`` into ``[1]``).

Screenshots of every step go to ``tests/output/ui_browser/`` (git-ignored; the path is printed):
look at them after changing a param, a label or a placeholder.

The browser is Debian's Chromium (``scripts/install`` installs it); ``playwright install``
downloads its own build and cannot work offline. A missing browser fails the test, never skips it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError as error:  # pragma: no cover - a broken install, said plainly
    raise ImportError("playwright is not installed: run scripts/install (the dev extra)") from error

from tests.fixtures.airflow_servers import AirflowStack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = Path(__file__).resolve().parent / "output" / "ui_browser"
TYPING_DELAY_MS = 80  # a person's pace: the editors re-render between keys
DAG_ID = "cvat_retrain"

# The UI re-renders after each server answer; on 2 busy cores that can take seconds.
expect.set_options(timeout=30_000)


# ---------------------------------------------------------------------------------------------
# Browser and screenshots
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with nothing that reaches the internet."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install (it installs Debian's chromium package)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """A fresh ``tests/output/ui_browser/``; its path is printed so a person can open it."""
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir(parents=True)
    print(f"\nscreenshots: {OUTPUT}")
    return OUTPUT


@pytest.fixture
def page(browser: Browser, airflow_stack: AirflowStack) -> Iterator[Page]:
    """A fresh tab (no state from another test), tall enough to show a whole form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=airflow_stack.url)
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: Page, folder: Path, name: str) -> Path:
    """Save the whole page as ``NN-name.png`` (numbered in the order the steps happened)."""
    path = folder / f"{len(list(folder.glob('*.png'))) + 1:02d}-{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


def open_dialog(page: Page, heading: str) -> Locator:
    """The open dialog whose heading is ``heading`` (Airflow's dialogs have no accessible name)."""
    return page.get_by_role("dialog").filter(has=page.get_by_role("heading", name=heading))


def type_like_a_person(page: Page, target: Locator, text: str) -> None:
    """Focus ``target`` and type ``text`` one key at a time, as a person does."""
    target.click()
    page.keyboard.type(text, delay=TYPING_DELAY_MS)


# ---------------------------------------------------------------------------------------------
# The CVAT connection form
# ---------------------------------------------------------------------------------------------


def cvat_connection_type() -> dict[str, Any]:
    """What the provider declares for its connection form (labels, placeholders, extra fields)."""
    from airflow_cvat import get_provider_info

    (declared,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "cvat"]
    return declared


def test_cvat_connection_form_shows_the_declared_fields(page: Page, screenshots: Path) -> None:
    """Admin → Connections → Add, type CVAT: every declared label and placeholder, nothing hidden shown."""
    declared = cvat_connection_type()
    behaviour = declared["ui-field-behaviour"]

    page.goto("/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    page.get_by_role("button", name="Add Connection").click()
    dialog = open_dialog(page, "Add Connection")
    type_like_a_person(page, dialog.get_by_role("combobox", name="Connection Type"), "CVAT")
    shot(page, screenshots, "connection-type-typed")
    page.get_by_role("option", name=declared["hook-name"], exact=True).click()

    for field, label in behaviour["relabeling"].items():
        widget = dialog.get_by_label(label, exact=True)
        expect(widget).to_have_attribute("name", field)
        placeholder = behaviour.get("placeholders", {}).get(field)
        if placeholder:
            expect(widget).to_have_attribute("placeholder", placeholder)
    for field in behaviour["hidden-fields"]:
        expect(dialog.locator(f"input[name='{field}']")).to_have_count(0)
    shot(page, screenshots, "connection-standard-fields")

    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    for field, spec in declared["conn-fields"].items():
        # Found by name, then its row: Airflow 3.3 does not tie extra text fields to their labels.
        row = dialog.get_by_role("group").filter(has=page.locator(f"[name='element_{field}']"))
        expect(row).to_contain_text(spec["label"])
        if spec.get("description"):
            expect(row).to_contain_text(spec["description"])
    shot(page, screenshots, "connection-extra-fields")
