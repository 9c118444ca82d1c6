"""Swagger UI's assets come from the installed package, not a CDN: the docs pages render offline."""

import pytest
from fastapi.testclient import TestClient

from serving import feedback_app, gateway, policy_server


@pytest.mark.parametrize("api, prefix", [(gateway.api, ""), (feedback_app.api, "/v1"),
                                         (policy_server.api, "/v1/policies")])
def test_docs_page_loads_its_assets_from_the_app(api, prefix):
    client = TestClient(api, root_path=prefix)
    page = client.get(f"{prefix}/docs")  # Serve hands the app the full path, root_path included
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    assert f"{prefix}/static-offline-docs/swagger-ui-bundle.js" in page.text
    assert f"'{prefix}/openapi.json'" in page.text or f'"{prefix}/openapi.json"' in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        got = client.get(f"{prefix}/static-offline-docs/{asset}")
        assert got.status_code == 200 and len(got.content) > 10_000, asset


def test_the_openapi_spec_lists_no_docs_routes():
    paths = feedback_app.openapi_spec()["paths"]
    assert any(p.endswith("/predict") for p in paths) and any(p.endswith("/feedback") for p in paths)
    assert not any("docs" in p or "static" in p for p in paths)
