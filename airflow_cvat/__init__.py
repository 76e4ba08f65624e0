"""Apache Airflow provider for CVAT: export finished annotation work, retrain, publish.

This module is imported by every Airflow process through the provider entry point, so it
imports nothing heavy: no Airflow, no cvat-sdk, no TensorFlow.
"""

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Provider metadata read by Airflow's ProvidersManager (connection form, hooks, operators)."""
    return {
        "package-name": "airflow-provider-cvat",
        "name": "CVAT",
        "description": "Export finished annotation work from CVAT and retrain pre-annotation models.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "CVAT",
                "external-doc-url": "https://docs.cvat.ai/",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "CVAT", "python-modules": ["airflow_cvat.hooks.cvat"]}],
        "operators": [
            {
                "integration-name": "CVAT",
                "python-modules": [
                    "airflow_cvat.operators.export",
                    "airflow_cvat.operators.base_model",
                    "airflow_cvat.operators.training",
                    "airflow_cvat.operators.convert",
                    "airflow_cvat.operators.preannotate",
                ],
            },
        ],
        "triggers": [{"integration-name": "CVAT", "python-modules": ["airflow_cvat.triggers.cvat"]}],
        "plugins": [
            {
                "name": "cvat_webhook: POST /cvat/webhook",
                "plugin-class": "airflow_cvat.webhook.bridge.CVATWebhookPlugin",
            }
        ],
        "notifications": ["airflow_cvat.notifications.email.CVATEmailNotifier"],
        "connection-types": [
            {
                "connection-type": "cvat",
                "hook-class-name": "airflow_cvat.hooks.cvat.CVATHook",
                "hook-name": "CVAT",
                # Labels stay short (long ones wrap and misalign the form); the advice goes into
                # placeholders and descriptions.
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Server URL", "login": "User", "password": "Token or password"},
                    "placeholders": {
                        "host": "https://app.cvat.ai",
                        "login": "empty with a token; else a CVAT user name",
                        "password": "access token (CVAT: avatar > Settings > Security)",
                    },
                },
                "conn-fields": {
                    "organization": {
                        "label": "Organization",
                        "schema": {"type": ["string", "null"]},
                        "description": "The organization's short name (slug), sent as X-Organization. "
                        "Empty: the personal workspace.",
                    },
                    "verify_ssl": {
                        "label": "Verify TLS",
                        "schema": {"type": ["boolean", "null"], "default": True},
                        "description": "Switch off only for a self-signed certificate on a trusted network.",
                    },
                },
            }
        ],
    }
