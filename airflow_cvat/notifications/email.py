"""Sending the pipeline's emails through the smtp provider's connection (SmtpHook).

* ``CVATEmailNotifier``: an Airflow notifier for ``on_failure_callback`` (which task failed, the
  exception, the link to its log) and ``on_success_callback`` (the model report, read from the
  publish task's XCom).
* ``ModelReportEmailOperator`` / ``send_model_report``: the success report as the DAG's last task.

What the messages say is built in ``airflow_cvat.notifications.message``; this module decides
who receives them and sends them.

Recipients: the run's conf ``emails`` (a list, or a string separated by commas, semicolons or
spaces), else the DAG's ``emails`` param, else the ``to`` given here; with none, nothing is sent
and the log says so (a missing address must not fail a pipeline that worked).

Without a mail server (the one-machine demo), ``save_dir`` writes each message as an ``.eml``
file, alongside sending or instead of it (``smtp_conn_id=None``).

The DAG file imports this module at every parse, so building (``message``), ``smtplib`` and the
smtp provider are imported where a message is sent, not here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from email.message import EmailMessage

    from airflow.providers.smtp.hooks.smtp import SmtpHook
    from airflow.sdk import Context

log = logging.getLogger(__name__)


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


# ---- sending ------------------------------------------------------------------------------------


def _send_message(hook: SmtpHook, message: EmailMessage, to: list[str]) -> None:
    """Send a ready ``EmailMessage`` through an open SmtpHook (the hook's own builder attaches
    files as application/octet-stream attachments, which mail clients do not show inline)."""
    import smtplib

    client = hook._smtp_client
    if client is None:
        raise RuntimeError("call inside `with hook:` (the SMTP client is opened there)")
    for attempt in range(hook.smtp_retry_limit + 1):
        try:
            client.send_message(message, to_addrs=to)
            return
        except smtplib.SMTPServerDisconnected:
            if attempt == hook.smtp_retry_limit:
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
    from email.utils import formatdate, make_msgid

    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="airflow-provider-cvat")
    saved = None
    if smtp_conn_id:
        # Imported here: the smtp provider (aiosmtplib) costs about 50 ms, on every parse of the DAG.
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
            message["From"] = from_email or hook.from_email or "airflow@localhost"
            _send_message(hook, message, list(to))
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


def send_model_report(
    outcome: dict[str, Any],
    to: str | Iterable[str],
    *,
    smtp_conn_id: str | None = "smtp_default",
    from_email: str | None = None,
    dag_id: str = "",
    run_id: str = "",
    save_dir: str | None = None,
    cvat_conn_id: str | None = None,
) -> EmailMessage | None:
    """Send the success report for a publish outcome (ConvertModelOperator's XCom)."""
    addresses = split_addresses(to)
    if not addresses:
        log.warning("no recipients for the model report (conf 'emails', the DAG's 'emails' param); not sent")
        return None
    from airflow_cvat.notifications.message import build_report

    message = build_report(outcome, dag_id=dag_id, run_id=run_id, cvat_url=cvat_url(cvat_conn_id))
    send(message, addresses, smtp_conn_id, from_email, save_dir)
    return message


def cvat_url(cvat_conn_id: str | None) -> str | None:
    """The CVAT server of a connection, for task links (None: the server the export recorded)."""
    if not cvat_conn_id:
        return None
    from airflow_cvat.hooks.cvat import CVATHook

    try:
        return CVATHook(cvat_conn_id).server_url
    except Exception:  # noqa: BLE001 - a missing connection costs the links, not the email
        log.warning("no CVAT server URL from connection %r; task links use the export's", cvat_conn_id)
        return None


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
    :param cvat_conn_id: the CVAT connection whose server the report's task links point to
        (None: the server the export recorded in the dataset manifest).
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
        cvat_conn_id: str | None = None,
    ) -> None:
        super().__init__()
        self.cvat_conn_id = cvat_conn_id
        self.to = to
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email
        self.publish_task_id = publish_task_id
        self.save_dir = save_dir

    def notify(self, context: Context) -> None:
        from airflow_cvat.notifications.message import build_failure, build_report

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
                outcome,
                dag_id=getattr(dag_run, "dag_id", ""),
                run_id=getattr(dag_run, "run_id", ""),
                cvat_url=cvat_url(self.cvat_conn_id),
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
    :param cvat_conn_id: the CVAT connection whose server the task links point to (None: the
        server the export recorded in the dataset manifest).

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
        cvat_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cvat_conn_id = cvat_conn_id
        self.pre_annotation = pre_annotation
        self.outcome = outcome
        self.publish_task_id = publish_task_id
        self.to = to
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email
        self.save_dir = save_dir

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_cvat.notifications.message import build_report

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
            cvat_url=cvat_url(self.cvat_conn_id),
        )
        saved = send(message, addresses, self.smtp_conn_id, self.from_email, self.save_dir)
        return {
            "sent_to": addresses,
            "subject": str(message["Subject"]),
            "file": str(saved) if saved else None,
        }
