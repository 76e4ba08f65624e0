"""Emails about the pipeline, through the smtp provider's connection (SmtpHook).

* ``CVATEmailNotifier``: an Airflow notifier for ``on_failure_callback`` (which task failed, the
  exception, the link to its log) and ``on_success_callback`` (the model report, read from the
  publish task's XCom).
* ``ModelReportEmailOperator`` / ``send_model_report``: the success report as the DAG's last task.

The success report: a link to the model (a presigned https URL of its model card for s3://, the
path for file://), the quality gate's outcome (did LATEST move, why, old and new AP50), the
metrics table with per-class AP, the loss and AP plot and a few validation images with the
predicted boxes, all inline (``multipart/related``, ``cid:`` images) so they show without
clicking anything. The images come from the published version's ``report/`` folder
(``ConvertModelOperator`` writes them).

Recipients: the run's conf ``emails`` (a list, or a string separated by commas, semicolons or
spaces), else the DAG's ``emails`` param, else the ``to`` given here; with none, nothing is sent
and the log says so (a missing address must not fail a pipeline that worked).

Without a mail server (the one-machine demo), ``save_dir`` writes each message as an ``.eml``
file, alongside sending or instead of it (``smtp_conn_id=None``).

No secrets: exception texts go through Airflow's secrets masker, and credentials in URLs
(``scheme://user:password@host``) are cut out, before they reach the message or the log.
"""

from __future__ import annotations

import html
import logging
import re
import smtplib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import BaseOperator
from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "[CVAT model]"
PRESIGN_SECONDS = 7 * 24 * 3600
MAX_ERROR_CHARS = 4000
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_QUERY_SECRETS = re.compile(
    r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|token|"
    r"access_token|password|secret)=)[^&\s]+"
)


# ---- recipients and redaction -------------------------------------------------------------------


def split_addresses(value: str | Iterable[str] | None) -> list[str]:
    """``"a@x, b@y; c@z"`` or ``["a@x", ...]`` -> a de-duplicated list, order kept."""
    if not value:
        return []
    items = re.split(r"[,;\s]+", value) if isinstance(value, str) else [str(v) for v in value]
    seen: dict[str, None] = {}
    for item in items:
        if item.strip():
            seen.setdefault(item.strip(), None)
    return list(seen)


def recipients(context: Context | dict, fallback: str | Iterable[str] | None = None) -> list[str]:
    """The run's conf ``emails``, else the DAG's ``emails`` param, else ``fallback``."""
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    params = context.get("params") or {}
    for source in (conf.get("emails"), params.get("emails"), fallback):
        found = split_addresses(source)
        if found:
            return found
    return []


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


# ---- sending ------------------------------------------------------------------------------------


class _MessageSmtpHook(SmtpHook):
    """SmtpHook that sends a ready ``EmailMessage`` (its own builder attaches files as
    application/octet-stream attachments, which mail clients do not show inline)."""

    def send_message(self, message: EmailMessage, to: list[str]) -> None:
        client = self._smtp_client
        if client is None:
            raise RuntimeError("call inside `with hook:` (the SMTP client is opened there)")
        for attempt in range(self.smtp_retry_limit + 1):
            try:
                client.send_message(message, to_addrs=to)
                return
            except smtplib.SMTPServerDisconnected:
                if attempt == self.smtp_retry_limit:
                    raise


def send(
    message: EmailMessage,
    to: Sequence[str],
    smtp_conn_id: str | None,
    from_email: str | None = None,
    save_dir: str | None = None,
) -> Path | None:
    """Send through the smtp provider's connection (host, port, TLS, login from the connection).

    ``save_dir`` also writes the message as ``.eml`` there (for a machine without a mail server,
    e.g. the one-machine demo); with ``smtp_conn_id=None`` it is only written. Returns the file.
    """
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="airflow-provider-cvat")
    saved = None
    if smtp_conn_id:
        with _MessageSmtpHook(smtp_conn_id=smtp_conn_id) as hook:
            message["From"] = from_email or hook.from_email or "airflow@localhost"
            hook.send_message(message, list(to))
        log.info("sent %r to %d recipient(s)", message["Subject"], len(to))
    else:
        message["From"] = from_email or "airflow@localhost"
    if save_dir:
        folder = Path(save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        saved = (
            folder / f"{stamp}-{re.sub(r'[^A-Za-z0-9]+', '-', str(message['Subject']))[:80].strip('-')}.eml"
        )
        saved.write_bytes(message.as_bytes())
        log.info("wrote %r to %s", message["Subject"], saved)
    return saved


# ---- the success report -------------------------------------------------------------------------


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


def _read(uri: str | None, conn_id: str | None) -> bytes | None:
    if not uri:
        return None
    from airflow_cvat.operators.convert import storage_path

    try:
        return storage_path(uri, conn_id).read_bytes()
    except (FileNotFoundError, OSError):
        log.warning("could not read %s for the email", uri)
        return None


def _gate_text(outcome: dict[str, Any]) -> tuple[str, str]:
    """(subject part, sentence) for the quality gate's outcome."""
    gate = outcome.get("latest") or {}
    if not outcome.get("published"):
        return "refused", f"Not published: {gate.get('reason')}"
    if gate.get("moved"):
        return "LATEST moved", f"LATEST now points to this version: {gate.get('reason')}"
    return "LATEST stays", f"LATEST did not move: {gate.get('reason')}"


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
        f"<tr><td style='padding:2px 10px'>{html.escape(str(label))}</td>"
        f"<td style='padding:2px 10px'>{int(count)}</td></tr>"
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


def build_report(
    outcome: dict[str, Any],
    *,
    dag_id: str = "",
    run_id: str = "",
    pre_annotation: dict[str, Any] | None = None,
) -> EmailMessage:
    """The success report as a message (no From/To yet): text, HTML and inline images.

    ``pre_annotation``: PreAnnotateOperator's summary, shown as a table of shapes per label.
    """
    from airflow_cvat.deploy.card import metrics_rows

    metrics = outcome.get("metrics") or {}
    gate = outcome.get("latest") or {}
    state, sentence = _gate_text(outcome)
    ap50 = metrics.get("AP50")
    subject = f"{SUBJECT_PREFIX} {outcome['model_name']} {outcome['version']}: {state} (AP50 {_fmt(ap50)})"
    href, link_text = model_link(outcome) if outcome.get("published") else ("", "")
    rows = metrics_rows(metrics)
    conn_id = outcome.get("storage_conn_id")
    files = outcome.get("files") or {}
    images = [("training.png", _read(files.get("plot"), conn_id))]
    images += [(uri.rsplit("/", 1)[-1], _read(uri, conn_id)) for uri in files.get("previews") or []]
    images = [(name, data) for name, data in images if data]

    pre_text, pre_html = pre_annotation_lines(pre_annotation)
    text = [
        subject,
        "",
        sentence,
        f"AP50: new {_fmt(gate.get('new_ap50'))}, LATEST before {_fmt(gate.get('old_ap50'))} "
        f"({gate.get('old_version') or 'none'}), margin {gate.get('margin')}",
        f"Model: {link_text or outcome.get('uri')}",
        "",
        "label\tAP\tAP50\tAP75",
        *("\t".join(row) for row in rows),
        "",
        f"TFLite: {(outcome.get('tflite') or {}).get('status', 'n/a')}",
        *(["", *pre_text] if pre_text else []),
        f"DAG {dag_id}, run {run_id}" if dag_id else "",
    ]
    table = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 10px'>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    pictures = "".join(
        f"<img src='cid:{name}' alt='{name}' style='margin:4px;max-width:100%'>" for name, _ in images
    )
    link = (
        f"<p>Model: <a href='{html.escape(href, quote=True)}'>{html.escape(link_text)}</a></p>"
        if href
        else ""
    )
    body = f"""<html><body style="font-family:sans-serif">
<h2>{html.escape(outcome["model_name"])} {html.escape(outcome["version"])}</h2>
<p><b>{html.escape(sentence)}</b></p>
<p>AP50: new {_fmt(gate.get("new_ap50"))}, LATEST before {_fmt(gate.get("old_ap50"))}
({html.escape(str(gate.get("old_version") or "none"))}), margin {_fmt(gate.get("margin"))}</p>
{link}
<table border="1" cellspacing="0" id="metrics">
<tr><th>label</th><th>AP</th><th>AP50</th><th>AP75</th></tr>{table}</table>
<p>TFLite: {_fmt((outcome.get("tflite") or {}).get("status", "n/a"))}</p>
{pre_html}
{pictures}
<p style="color:#777">DAG {html.escape(dag_id)}, run {html.escape(run_id)}</p>
</body></html>"""
    message = EmailMessage()
    message["Subject"] = subject
    message.set_content("\n".join(text))
    message.add_alternative(body, subtype="html")
    html_part = message.get_payload()[1]
    for name, data in images:
        html_part.add_related(data, "image", "png", cid=f"<{name}>", filename=name, disposition="inline")
    return message


def send_model_report(
    outcome: dict[str, Any],
    to: str | Iterable[str],
    *,
    smtp_conn_id: str | None = "smtp_default",
    from_email: str | None = None,
    dag_id: str = "",
    run_id: str = "",
    save_dir: str | None = None,
) -> EmailMessage | None:
    """Send the success report for a publish outcome (ConvertModelOperator's XCom)."""
    addresses = split_addresses(to)
    if not addresses:
        log.warning("no recipients for the model report (conf 'emails', the DAG's 'emails' param); not sent")
        return None
    message = build_report(outcome, dag_id=dag_id, run_id=run_id)
    send(message, addresses, smtp_conn_id, from_email, save_dir)
    return message


# ---- the failure report -------------------------------------------------------------------------


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
    log_html = (
        f"<p>Log: <a href='{html.escape(log_url, quote=True)}'>{html.escape(log_url)}</a></p>"
        if log_url
        else "<p>Log: no link available</p>"
    )
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


# ---- Airflow integration ----------------------------------------------------------------------


class CVATEmailNotifier(BaseNotifier):
    """Email on failure (which task, why, log link) or success (the model report).

    Use as ``on_failure_callback=CVATEmailNotifier()`` on tasks or in ``default_args``, and as
    ``on_success_callback=CVATEmailNotifier(publish_task_id="publish")`` on the DAG's last task
    (or use ``ModelReportEmailOperator``). On success it pulls the publish outcome from the XCom
    of ``publish_task_id``; without one it sends nothing.

    :param to: fallback recipients when neither the run's conf nor the DAG's params name any.
    :param smtp_conn_id: the smtp provider's connection.
    :param publish_task_id: the ConvertModelOperator task whose XCom is the success report.
    :param save_dir: also write each message as an .eml file there (None: smtp only); with
        ``smtp_conn_id=None`` the file is the only output.
    """

    template_fields = ("to", "publish_task_id", "save_dir")

    def __init__(
        self,
        *,
        to: str | Iterable[str] | None = None,
        smtp_conn_id: str | None = "smtp_default",
        from_email: str | None = None,
        publish_task_id: str | None = "publish",
        save_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.to = to
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email
        self.publish_task_id = publish_task_id
        self.save_dir = save_dir

    def notify(self, context: Context) -> None:
        addresses = recipients(context, self.to)
        if not addresses:
            self.log.warning("no email recipients (conf 'emails', the DAG's 'emails' param, to=); not sent")
            return
        if _failed(context):
            send(build_failure(context), addresses, self.smtp_conn_id, self.from_email, self.save_dir)
            return
        ti = context.get("ti")
        outcome = ti.xcom_pull(task_ids=self.publish_task_id) if ti and self.publish_task_id else None
        if not outcome:
            self.log.warning("no publish outcome in the XCom of %r; no report sent", self.publish_task_id)
            return
        dag_run = context.get("dag_run")
        send(
            build_report(
                outcome, dag_id=getattr(dag_run, "dag_id", ""), run_id=getattr(dag_run, "run_id", "")
            ),
            addresses,
            self.smtp_conn_id,
            self.from_email,
            self.save_dir,
        )


def _failed(context: Context | dict) -> bool:
    if context.get("exception") is not None:
        return True
    ti = context.get("ti")
    state = str(getattr(ti, "state", "") or "")
    return state.endswith(("failed", "up_for_retry")) or "fail" in str(context.get("reason") or "")


class ModelReportEmailOperator(BaseOperator):
    """The DAG's last task: email the publish outcome (ConvertModelOperator's XCom) to the recipients.

    :param outcome: the outcome dict, usually ``publish.output`` (an XComArg); or leave it None and
        give ``publish_task_id``.
    :param save_dir: also write the message as an .eml file there (see ``send``).
    :param pre_annotation: PreAnnotateOperator's summary (its XCom), shown in the report when given.

    Returns (XCom) ``{"sent_to", "subject", "file"}``.
    """

    template_fields: Sequence[str] = ("outcome", "to", "publish_task_id", "save_dir", "pre_annotation")
    ui_color = "#f0e4d6"

    def __init__(
        self,
        *,
        outcome: dict | None = None,
        publish_task_id: str | None = None,
        to: str | Iterable[str] | None = None,
        smtp_conn_id: str | None = "smtp_default",
        from_email: str | None = None,
        save_dir: str | None = None,
        pre_annotation: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pre_annotation = pre_annotation
        self.outcome = outcome
        self.publish_task_id = publish_task_id
        self.to = to
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email
        self.save_dir = save_dir

    def execute(self, context: Context) -> dict[str, Any]:
        outcome = self.outcome
        if outcome is None and self.publish_task_id:
            outcome = context["ti"].xcom_pull(task_ids=self.publish_task_id)
        if not outcome:
            raise ValueError("no publish outcome: pass outcome=publish.output or publish_task_id=")
        addresses = recipients(context, self.to)
        if not addresses:
            self.log.warning("no recipients (conf 'emails', the DAG's 'emails' param, to=); not sent")
            return {"sent_to": [], "subject": None, "file": None}
        dag_run = context.get("dag_run")
        message = build_report(
            outcome,
            dag_id=getattr(dag_run, "dag_id", ""),
            run_id=getattr(dag_run, "run_id", ""),
            pre_annotation=self.pre_annotation if isinstance(self.pre_annotation, dict) else None,
        )
        saved = send(message, addresses, self.smtp_conn_id, self.from_email, self.save_dir)
        return {
            "sent_to": addresses,
            "subject": str(message["Subject"]),
            "file": str(saved) if saved else None,
        }
