"""The messages: the success report and the failure email, as ready ``EmailMessage`` objects.

Building is apart from sending (``airflow_cvat.notifications.email``) so that a message can be
looked at (saved, rendered, tested) without a mail server, and so that each module owns one
concept.

The success report, top to bottom: what happened to LATEST in plain words ("AP50 0.81, up 0.05
from version X, which it replaces as LATEST"), links (the model, the Airflow run, the CVAT
task(s) it was trained on), validation AP at each evaluation during training, the metrics
table with per-class AP, the loss and AP plot, and validation images with predictions, under a
legend that says which boxes are ground truth and which are predictions. Images are inline
(``multipart/related``, ``cid:``), so they show without clicking anything. The images, the
AP history (metrics.json) and the CVAT source (model_card.json) come from the published
version's folder, which ``ConvertModelOperator`` writes.

No secrets: exception texts go through Airflow's secrets masker, and credentials in URLs
(``scheme://user:password@host``) are cut out, before they reach the message or the log.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[CVAT model]"
PRESIGN_SECONDS = 7 * 24 * 3600
MAX_ERROR_CHARS = 4000
AIRFLOW_DEFAULT_URL = "http://localhost:8080"
"""What Airflow itself links to when ``[api] base_url`` is not set (``TaskInstance.log_url``)."""
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_QUERY_SECRETS = re.compile(
    r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|token|"
    r"access_token|password|secret)=)[^&\s]+"
)
_CELL = "style='padding:2px 10px'"
MAX_HISTORY_POINTS = 8
"""The AP history sentence names at most this many evaluations (the plot shows them all)."""
LEGEND_HTML = (
    "<p id='legend' style='font-size:14px'>"
    "<span style='display:inline-block;width:26px;height:14px;border:2px dashed #fff;"
    "outline:1px solid #000;background:#5a7a9a;vertical-align:middle'></span> "
    "<b>ground truth</b> (boxes people drew in CVAT) &nbsp;&nbsp; "
    "<span style='display:inline-block;width:26px;height:14px;border:2px solid #e6194b;"
    "vertical-align:middle'></span><span style='background:#e6194b;color:#fff;padding:0 4px;"
    "font-size:12px;vertical-align:middle'>label 0.91</span> "
    "<b>prediction</b> (the new model: a solid box in its class's colour, with the label and "
    "the score)</p>"
)


# ---- redaction ------------------------------------------------------------------------------------


def scrub(text: str) -> str:
    """Mask registered secrets, credentials in URLs and signed query parameters; cap the length."""
    try:
        from airflow.sdk._shared.secrets_masker import redact

        text = str(redact(text))
    except Exception:  # noqa: BLE001 - masking is best effort on top of the patterns below
        pass
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _QUERY_SECRETS.sub(r"\1***", text)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " [...]"


# ---- links ----------------------------------------------------------------------------------------


def model_link(outcome: dict[str, Any], expires: int = PRESIGN_SECONDS) -> tuple[str, str]:
    """(href, text) for the published model: a presigned model-card URL on s3, the folder path locally."""
    uri = outcome["uri"]
    if uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return uri, path
    if uri.startswith(("s3://", "s3a://")):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, key = uri.split("://", 1)[1].partition("/")
        card = (outcome.get("files") or {}).get("model_card") or f"{uri}/model_card.md"
        card_key = card.split("://", 1)[1].partition("/")[2]
        hook = S3Hook(aws_conn_id=outcome.get("storage_conn_id"))
        url = hook.generate_presigned_url(
            client_method="get_object", params={"Bucket": bucket, "Key": card_key}, expires_in=expires
        )
        return url or uri, f"{uri}/ (model card, link valid {expires // 86400} days)"
    return uri, uri


def airflow_run_url(dag_id: str, run_id: str) -> str | None:
    """The DAG run's page (grid and details) in Airflow 3's UI, from ``[api] base_url``.

    Falls back to Airflow's own default, as ``TaskInstance.log_url`` does, so both links agree.
    """
    if not dag_id or not run_id:
        return None
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback=None) or AIRFLOW_DEFAULT_URL
    return f"{base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def cvat_links(source: dict[str, Any] | None, server: str | None = None) -> list[tuple[str, str]]:
    """(text, href) for the CVAT project and task(s) a dataset came from (its manifest's source).

    ``server``: the CVAT connection's URL; default the server the export recorded.
    """
    if not source or source.get("kind", "cvat") != "cvat":
        return []
    base = (server or source.get("server") or "").rstrip("/")
    if not base:
        return []
    links = []
    if source.get("project_id") is not None:
        links.append((f"project {source['project_id']}", f"{base}/projects/{int(source['project_id'])}"))
    links += [(f"task {int(task)}", f"{base}/tasks/{int(task)}") for task in source.get("task_ids") or []]
    return links


# ---- what the report says -------------------------------------------------------------------------


def _ap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def comparison(outcome: dict[str, Any]) -> str:
    """The quality gate's outcome in plain words: the new AP50 against the previous LATEST."""
    gate = outcome.get("latest") or {}
    new, old, old_version = gate.get("new_ap50"), gate.get("old_ap50"), gate.get("old_version")
    name = outcome.get("model_name", "the model")
    still = f"LATEST still points to {old_version}" if old_version else f"{name} still has no LATEST"
    if not outcome.get("published"):
        reason = str(gate.get("reason") or "not published")
        return f"{reason[:1].upper()}{reason[1:]}; {still}."
    if gate.get("below_floor"):
        return (
            f"AP50 {_ap(new)} is below the quality floor {gate.get('floor')}, so this version is kept "
            f"to inspect but does not become LATEST; {still}."
        )
    if not old_version:
        becomes = "it becomes LATEST" if gate.get("moved") else "it does not become LATEST"
        return f"AP50 {_ap(new)}. The first published version of {name}: {becomes}."
    if new is None or old is None:
        moved = f"it replaces {old_version} as LATEST" if gate.get("moved") else still
        return f"AP50 {_ap(new)} against LATEST {old_version}'s {_ap(old)}: {moved}."
    delta = new - old
    change = (
        f"up {delta:.3f} from" if delta > 5e-4 else f"down {-delta:.3f} from" if delta < -5e-4 else "equal to"
    )
    compared = f"AP50 {_ap(new)}, {change} {_ap(old)} of version {old_version}"
    if gate.get("moved"):
        margin = f" (within the margin {gate.get('margin')})" if delta < -5e-4 else ""
        return f"{compared}{margin}, which it replaces as LATEST."
    return f"{compared}: more than the margin {gate.get('margin')} below LATEST, so {still}."


def history_sentence(history: list[dict[str, Any]]) -> str:
    """``Validation AP50 during training: 0.12 at step 12, ... 0.70 at step 60 (final)``, and the cost."""
    if not history:
        return ""
    shown = history
    if len(history) > MAX_HISTORY_POINTS:  # evenly spaced, the first and the last kept
        last = len(history) - 1
        shown = [history[round(i * last / (MAX_HISTORY_POINTS - 1))] for i in range(MAX_HISTORY_POINTS)]
    points = ", ".join(f"{_ap(p.get('AP50'))} at step {p['step']}" for p in shown)
    # The lower median: the first evaluation and the final one also pay for tracing the model.
    seconds = sorted(float(p["seconds"]) for p in history if p.get("seconds") is not None)
    cost = f"; one evaluation took about {seconds[(len(seconds) - 1) // 2]:.1f} s" if seconds else ""
    return f"Validation AP50 during training: {points} (final){cost}."


def _gate_state(outcome: dict[str, Any]) -> str:
    """The subject's word for the gate's outcome."""
    if not outcome.get("published"):
        return "refused"
    return "LATEST moved" if (outcome.get("latest") or {}).get("moved") else "LATEST stays"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def pre_annotation_lines(summary: dict[str, Any] | None) -> tuple[list[str], str]:
    """(text lines, HTML) for PreAnnotateOperator's summary; nothing when the step did not run."""
    if not isinstance(summary, dict) or summary.get("status") != "ok":
        return [], ""
    tasks = ", ".join(str(t) for t in summary.get("task_ids") or [])
    inference = float(summary.get("seconds_inference") or 0.0)
    upload = float(summary.get("seconds_upload") or 0.0)
    head = (
        f"Pre-annotation of task(s) {tasks}: {summary.get('frames', 0)} frame(s), "
        f"{summary.get('shapes', 0)} shape(s) uploaded (source auto); "
        f"{inference:.1f} s inference, {upload:.1f} s upload"
    )
    counts = sorted((summary.get("per_label") or {}).items())
    skipped = summary.get("skipped_labels") or {}
    text = [head, *(f"  {label}\t{count}" for label, count in counts)]
    if skipped:
        text.append(
            "  not labels of the task (skipped): " + ", ".join(f"{k} {v}" for k, v in skipped.items())
        )
    rows = "".join(
        f"<tr><td {_CELL}>{html.escape(str(label))}</td><td {_CELL}>{int(count)}</td></tr>"
        for label, count in counts
    )
    body = (
        f"<h3>Pre-annotation</h3><p>{html.escape(head)}</p>"
        f"<table border='1' cellspacing='0' id='pre-annotation'><tr><th>label</th><th>shapes</th></tr>"
        f"{rows}</table>"
    )
    if skipped:
        body += (
            "<p>Not labels of the task (skipped): "
            + html.escape(", ".join(f"{k} {v}" for k, v in skipped.items()))
            + "</p>"
        )
    return text, body


# ---- reading the published version ---------------------------------------------------------------


def _read(uri: str | None, conn_id: str | None) -> bytes | None:
    if not uri:
        return None
    from airflow_cvat.operators.convert import storage_path

    try:
        return storage_path(uri, conn_id).read_bytes()
    except (FileNotFoundError, OSError):
        log.warning("could not read %s for the email", uri)
        return None


def _read_json(uri: str, conn_id: str | None) -> dict[str, Any]:
    data = _read(uri, conn_id)
    try:
        return json.loads(data) if data else {}
    except ValueError:
        log.warning("%s is not JSON; left out of the email", uri)
        return {}


def _published_facts(outcome: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(AP history from metrics.json, model_card.json: the CVAT source, the split, what was dropped)."""
    if not outcome.get("published"):
        return [], {}
    conn_id = outcome.get("storage_conn_id")
    history = _read_json(f"{outcome['uri']}/metrics.json", conn_id).get("history") or []
    return list(history), _read_json(f"{outcome['uri']}/model_card.json", conn_id)


def training_data_items(card: dict[str, Any]) -> list[str]:
    """The split and every drop by reason, as the model card words them: data lost on the way is
    never silent, and the email is where people read it."""
    from airflow_cvat.deploy.card import training_data_lines

    if not card:
        return []
    return [line.removeprefix("- ") for line in training_data_lines(card.get("training_data"))[3:]]


def _images(outcome: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(content id, PNG) of the plot and the previews that could be read."""
    conn_id = outcome.get("storage_conn_id")
    files = outcome.get("files") or {}
    images = [("training.png", _read(files.get("plot"), conn_id))]
    images += [(uri.rsplit("/", 1)[-1], _read(uri, conn_id)) for uri in files.get("previews") or []]
    return [(name, data) for name, data in images if data]


# ---- the success report ---------------------------------------------------------------------------


def _link(href: str, text: str) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{html.escape(text)}</a>"


def build_report(
    outcome: dict[str, Any],
    *,
    dag_id: str = "",
    run_id: str = "",
    pre_annotation: dict[str, Any] | None = None,
    cvat_url: str | None = None,
) -> EmailMessage:
    """The success report as a message (no From/To yet): text, HTML and inline images.

    ``pre_annotation``: PreAnnotateOperator's summary, shown as a table of shapes per label.
    ``cvat_url``: the CVAT server for task links (default: the one the export recorded).
    """
    from airflow_cvat.deploy.card import metrics_rows

    gate = outcome.get("latest") or {}
    subject = (
        f"{SUBJECT_PREFIX} {outcome['model_name']} {outcome['version']}: {_gate_state(outcome)} "
        f"(AP50 {_fmt((outcome.get('metrics') or {}).get('AP50'))})"
    )
    sentence = comparison(outcome)
    history, card = _published_facts(outcome)
    links = _links(outcome, dag_id, run_id, cvat_links((card.get("data") or {}).get("source"), cvat_url))
    data_items = training_data_items(card)
    test_line = (card.get("test") or {}).get("line")
    rows = metrics_rows(outcome.get("metrics") or {})
    images = _images(outcome)
    pre_text, pre_html = pre_annotation_lines(pre_annotation)
    curve = history_sentence(history)
    text = [
        subject,
        "",
        sentence,
        f"Quality gate: {gate.get('reason')}",
        # The model's line names its folder: a presigned URL is for the HTML link only.
        *(f"{label}: {text if label == 'Model' else href}" for label, href, text in links),
        *([curve] if curve else []),
        *(["", "Training data:", *(f"- {item}" for item in data_items)] if data_items else []),
        "",
        "label\tAP\tAP50\tAP75",
        *("\t".join(row) for row in rows),
        *([test_line] if test_line else []),
        "",
        f"TFLite: {(outcome.get('tflite') or {}).get('status', 'n/a')}",
        *(["", *pre_text] if pre_text else []),
    ]
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content("\n".join(text))
    body = _report_html(outcome, sentence, links, curve, rows, images, pre_html, data_items, test_line)
    message.add_alternative(body, subtype="html")
    html_part = message.get_payload()[1]
    for name, data in images:
        html_part.add_related(data, "image", "png", cid=f"<{name}>", filename=name, disposition="inline")
    return message


def _links(
    outcome: dict[str, Any], dag_id: str, run_id: str, cvat: list[tuple[str, str]]
) -> list[tuple[str, str, str]]:
    """(what, href, link text) for the model, the Airflow run and the CVAT tasks."""
    links = []
    if outcome.get("published"):
        href, text = model_link(outcome)
        links.append(("Model", href, text))
    run_url = airflow_run_url(dag_id, run_id)
    if run_url:
        links.append(("Airflow run", run_url, f"{dag_id} / {run_id}"))
    links += [("CVAT", href, text) for text, href in cvat]
    return links


def _report_html(
    outcome, sentence, links, curve, rows, images, pre_html, data_items=(), test_line=None
) -> str:
    gate = outcome.get("latest") or {}
    grouped: dict[str, list[str]] = {}  # "CVAT: task 12, task 13" on one line
    for label, href, text in links:
        grouped.setdefault(label, []).append(_link(href, text))
    link_lines = "".join(
        f"<li>{html.escape(label)}: {', '.join(items)}</li>" for label, items in grouped.items()
    )
    table = "".join(
        "<tr>" + "".join(f"<td {_CELL}>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    plot = [name for name, _ in images if name == "training.png"]
    previews = [name for name, _ in images if name != "training.png"]
    plot_html = "".join(f"<img src='cid:{n}' alt='{n}' style='max-width:100%'>" for n in plot)
    preview_html = ""
    if previews:
        pictures = "".join(
            f"<img src='cid:{n}' alt='{n}' style='margin:4px;width:420px;max-width:48%'>" for n in previews
        )
        preview_html = f"<h3>Validation images</h3>{LEGEND_HTML}<div>{pictures}</div>"
    return f"""<html><body style="font-family:sans-serif;max-width:880px">
<h2>{html.escape(outcome["model_name"])} {html.escape(outcome["version"])}</h2>
<p id="comparison" style="font-size:16px"><b>{html.escape(sentence)}</b></p>
<p style="color:#555;font-size:13px">Quality gate: {html.escape(str(gate.get("reason")))}</p>
<ul id="links">{link_lines}</ul>
<h3>Training</h3>
{f'<p id="history">{html.escape(curve)}</p>' if curve else ""}
{plot_html}
{_data_html(data_items)}
<h3>Validation AP per class</h3>
<table border="1" cellspacing="0" id="metrics">
<tr><th>label</th><th>AP</th><th>AP50</th><th>AP75</th></tr>{table}</table>
{f'<p id="test-subset"><b>{html.escape(test_line)}</b></p>' if test_line else ""}
<p>TFLite: {_fmt((outcome.get("tflite") or {}).get("status", "n/a"))}</p>
{pre_html}
{preview_html}
</body></html>"""


def _data_html(items: Sequence[str]) -> str:
    if not items:
        return ""
    lines = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    return f"<h3>Training data</h3><ul id='training-data'>{lines}</ul>"


# ---- the failure email ----------------------------------------------------------------------------


def build_failure(context: Context | dict) -> EmailMessage:
    """Which task failed, the exception (masked), the log link; from a failure callback's context."""
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag_id = getattr(ti, "dag_id", None) or getattr(dag_run, "dag_id", "") or ""
    run_id = getattr(ti, "run_id", None) or getattr(dag_run, "run_id", "") or ""
    task_id = getattr(ti, "task_id", None)
    error = context.get("exception")
    reason = context.get("reason")
    if error is not None:
        what = scrub(f"{type(error).__name__}: {error}")
    else:
        what = scrub(str(reason or "the run failed (no exception was passed to the callback)"))
    try:
        log_url = ti.log_url if ti is not None else None
    except Exception:  # noqa: BLE001 - a missing base_url must not stop the email
        log_url = None
    where = f"task {task_id}" if task_id else "the DAG run"
    subject = f"{SUBJECT_PREFIX} FAILED: {dag_id} / {task_id or 'run'}"
    try_number = getattr(ti, "try_number", None)
    text = "\n".join(
        [
            subject,
            "",
            f"{where} of DAG {dag_id} failed (run {run_id}" + (f", try {try_number})" if try_number else ")"),
            f"Error: {what}",
            f"Log: {log_url}" if log_url else "Log: (no log link available)",
        ]
    )
    attempt = f", try {try_number}" if try_number else ""
    log_html = f"<p>Log: {_link(log_url, log_url)}</p>" if log_url else "<p>Log: no link available</p>"
    body = f"""<html><body style="font-family:sans-serif">
<h2>{html.escape(where)} failed</h2>
<p>DAG <b>{html.escape(dag_id)}</b>, run <b>{html.escape(run_id)}</b>{attempt}</p>
<pre style="background:#f6f6f6;padding:8px;white-space:pre-wrap">{html.escape(what)}</pre>
{log_html}
</body></html>"""
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content(text)
    message.add_alternative(body, subtype="html")
    return message
