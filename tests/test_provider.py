"""The provider as Airflow sees it: registered, with a CVAT connection form, and light to import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

import airflow_cvat


def test_provider_info_matches_airflows_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(airflow_cvat.get_provider_info(), schema)


def test_airflow_providers_list_shows_the_provider():
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    packages = {p["package_name"]: p for p in json.loads(out[out.index("[") :])}
    assert packages["airflow-provider-cvat"]["version"] == airflow_cvat.__version__


def test_connection_form_offers_cvat_fields(airflow_db):
    """What the UI's connection form is built from (GET /ui/connections/hook_meta): short labels
    (long ones wrap and misalign the inputs), the advice in placeholders and descriptions."""
    from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

    meta = {m.connection_type: m for m in HookMetaService.hook_meta_data()}
    cvat = meta["cvat"]
    assert cvat.hook_name == "CVAT"
    assert set(cvat.extra_fields) == {"organization", "verify_ssl"}
    assert cvat.extra_fields["verify_ssl"]["value"] is True
    fields = cvat.standard_fields
    labels = {
        "host": fields.host.title,
        "login": fields.login.title,
        "password": fields.password.title,
        "organization": cvat.extra_fields["organization"]["schema"]["title"],
        "verify_ssl": cvat.extra_fields["verify_ssl"]["schema"]["title"],
    }
    assert labels["host"] == "Server URL" and "token" in labels["password"].lower()
    assert all(len(label) <= 18 for label in labels.values()), labels
    assert fields.host.placeholder.startswith("https://")
    assert "token" in fields.login.placeholder and "Settings > Security" in fields.password.placeholder
    assert "slug" in cvat.extra_fields["organization"]["description"]
    assert "self-signed" in cvat.extra_fields["verify_ssl"]["description"]
    assert fields.port.hidden and fields.url_schema.hidden


def test_providers_page_links_documentation_that_exists():
    """Admin > Providers links the distribution's Documentation URL (Project-URL metadata); without
    it Airflow invents an apache.org page that does not exist for a third-party provider."""
    import tomllib

    code = (
        "import json; from airflow.providers_manager import ProvidersManager; "
        "print(json.dumps(ProvidersManager().providers['airflow-provider-cvat'].data['documentation-url']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    url = json.loads(out.strip().splitlines()[-1])
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    readme = project["readme"]
    assert url == project["urls"]["Documentation"] == "https://pypi.org/project/airflow-provider-cvat/"
    assert readme == "README.md"  # the PyPI page is the README: the page documents the provider


def test_airflow_side_never_imports_tensorflow():
    code = (
        "import sys, airflow_cvat.hooks.cvat, airflow_cvat.operators.export, airflow_cvat.arguments, "
        "airflow_cvat.catalog; heavy = [m for m in ('tensorflow', 'official', 'keras') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
