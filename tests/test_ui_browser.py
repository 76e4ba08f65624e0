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

import os
import re
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


pytestmark = pytest.mark.slow  # starts Airflow's servers and a browser: after the light tests


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, with nothing that reaches the internet."""
    if not os.access(CHROMIUM, os.X_OK):
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


# ---------------------------------------------------------------------------------------------
# The trigger form of cvat_retrain
# ---------------------------------------------------------------------------------------------

TASK_IDS = "12, 13"
MODEL = "frcnn-res50-coco"
ARGUMENTS = "epochs=100;batch_size=4;initial_learning_rate=0.0003"
MALFORMED_ARGUMENTS = "epochs=100 batch_size=4"  # a space where the ';' belongs


def dag_params(stack: AirflowStack) -> dict[str, dict[str, Any]]:
    """The params as the UI receives them: value (the default), schema, description."""
    return stack.api(f"dags/{DAG_ID}/details")["params"]


def open_trigger_form(page: Page) -> Locator:
    """The DAG's page, its Trigger button, the dialog with the params' form."""
    page.goto(f"/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = open_dialog(page, f"Trigger Dag - {DAG_ID}")
    expect(dialog.get_by_role("button", name="Run Parameters")).to_be_visible()
    return dialog


def trigger_button(dialog: Locator) -> Locator:
    return dialog.get_by_test_id("trigger-dag-submit")


def keep_paused(dialog: Locator) -> None:
    """Untick "Unpause cvat_retrain on trigger" (Airflow ticks it by default).

    The DAG is created paused; unpausing it would also start its nightly schedule, and with the
    scheduler running here that would be a second, unasked-for run. Ticked or not is the person's
    choice; this test takes the careful one and checks that the DAG then stays paused.
    """
    label = f"Unpause {DAG_ID} on trigger"
    dialog.get_by_text(label, exact=True).click()
    expect(dialog.get_by_role("checkbox", name=label)).not_to_be_checked()


def param_row(page: Page, dialog: Locator, name: str) -> Locator:
    """The form's row for one param (label, widget, description), found by the widget's name."""
    return dialog.get_by_role("group").filter(has=page.locator(f"[name='element_{name}']"))


def test_trigger_form_runs_what_a_person_typed(
    page: Page, airflow_stack: AirflowStack, screenshots: Path
) -> None:
    """Defaults trigger; ids, a model and arguments typed key by key arrive unchanged in the conf."""
    params = dag_params(airflow_stack)
    page.set_viewport_size({"width": 1400, "height": 2800})  # the whole form in one screenshot
    dialog = open_trigger_form(page)

    # As it opens: nothing marked required, choices show their names (never "null"), Trigger works.
    expect(dialog.locator("label[data-required]")).to_have_count(0)
    for name, param in params.items():
        if names := param["schema"].get("values_display"):
            default = "null" if param["value"] is None else str(param["value"])
            expect(param_row(page, dialog, name)).to_contain_text(names[default])
    expect(trigger_button(dialog)).to_be_enabled()
    shot(page, screenshots, "trigger-form-defaults")

    keep_paused(dialog)
    type_like_a_person(page, dialog.locator("#element_task_ids"), TASK_IDS)
    expect(dialog.locator("#element_task_ids")).to_have_value(TASK_IDS)  # not reformatted mid-typing
    dialog.get_by_role("combobox", name=params["model"]["schema"]["title"]).click()
    page.get_by_role("option", name=params["model"]["schema"]["values_display"][MODEL], exact=True).click()
    type_like_a_person(page, dialog.locator("#element_arguments"), ARGUMENTS)
    expect(dialog.locator("#element_arguments")).to_have_value(ARGUMENTS)
    expect(trigger_button(dialog)).to_be_enabled()
    shot(page, screenshots, "trigger-form-typed")

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as posted:
        trigger_button(dialog).click()
    assert posted.value.ok, posted.value.text()
    run_id = posted.value.json()["dag_run_id"]
    expect(dialog).to_be_hidden()
    shot(page, screenshots, "triggered")

    run = airflow_stack.api(f"dags/{DAG_ID}/dagRuns/{run_id}")
    defaults = {name: param["value"] for name, param in params.items()}
    assert run["conf"] == {**defaults, "task_ids": TASK_IDS, "model": MODEL, "arguments": ARGUMENTS}
    assert run["run_type"] == "manual"
    assert airflow_stack.api(f"dags/{DAG_ID}")["is_paused"] is True
    runs = airflow_stack.api(f"dags/{DAG_ID}/dagRuns")["dag_runs"]
    assert [(r["dag_run_id"], r["state"]) for r in runs] == [(run_id, "queued")]  # paused: waits


def test_trigger_form_refuses_malformed_arguments(
    page: Page, airflow_stack: AirflowStack, screenshots: Path
) -> None:
    """Arguments that do not parse are refused before a run exists, with the field named."""
    runs_before = airflow_stack.api(f"dags/{DAG_ID}/dagRuns")["total_entries"]
    page.set_viewport_size({"width": 1400, "height": 2800})
    dialog = open_trigger_form(page)
    keep_paused(dialog)
    type_like_a_person(page, dialog.locator("#element_arguments"), MALFORMED_ARGUMENTS)

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/dagRuns")) as posted:
        trigger_button(dialog).click()
    assert posted.value.status == 400, posted.value.text()
    expect(dialog.get_by_text("Invalid input for param arguments")).to_be_visible()
    shot(page, screenshots, "trigger-form-malformed-arguments")
    assert airflow_stack.api(f"dags/{DAG_ID}/dagRuns")["total_entries"] == runs_before


# ---------------------------------------------------------------------------------------------
# The docs a user reads in the UI
# ---------------------------------------------------------------------------------------------


def test_dag_and_task_docs_render_as_markdown(
    page: Page, airflow_stack: AirflowStack, screenshots: Path
) -> None:
    """The DAG's doc_md shows its headings as headings; every task has docs, and they open.

    The docs dialog is small and scrolls: its screenshot shows the top; the headings are checked
    in the page itself.
    """
    doc_md = airflow_stack.api(f"dags/{DAG_ID}/details")["doc_md"]
    headings = [m.group(1).replace("`", "") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", doc_md, re.M)]
    assert len(headings) >= 3, f"doc_md should be markdown with headings:\n{doc_md[:500]}"
    tasks = {t["task_id"]: t.get("doc_md") for t in airflow_stack.api(f"dags/{DAG_ID}/tasks")["tasks"]}
    assert [task for task, doc in tasks.items() if not doc] == []

    page.goto(f"/dags/{DAG_ID}")
    page.get_by_role("button", name="Dag Docs").click()
    docs = open_dialog(page, "Dag Documentation")
    for heading in headings:
        expect(docs.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    shot(page, screenshots, "dag-docs")

    page.goto(f"/dags/{DAG_ID}/tasks/config")
    page.get_by_role("button", name="Documentation").click()
    expect(page.get_by_role("dialog")).to_contain_text(tasks["config"].split("`")[0].strip())
    shot(page, screenshots, "task-docs-config")
