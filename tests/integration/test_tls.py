"""`serving.tls` on a live Serve proxy: HTTPS with a certificate made here, plain HTTP refused.

The certificate is self-signed (the `cryptography` package), for 127.0.0.1; the client
trusts exactly it. `deploy_gateway` is the run's own way of starting Serve's proxy.
"""

import ssl

import httpx
import pytest
import ray
from ray import serve

from core.config.serving import ServingSection
from core.auth.tls import TLSSection
from serving.gateway import deploy_gateway, undeploy
from tests.conftest import free_port
from tests.integration.helpers import self_signed, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    port = free_port()
    cfg = ServingSection(host="127.0.0.1", http_port=port, tls=TLSSection(certfile=cert, keyfile=key))
    ray.init(num_cpus=2, include_dashboard=False, namespace="tls-test", log_to_driver=False)
    try:
        endpoints = deploy_gateway(cfg, str(tmp / "registry"))
        yield {"url": endpoints.http, "port": port, "cert": cert}
        undeploy()
        serve.shutdown()
    finally:
        ray.shutdown()


def test_https_answers_with_the_certificate_and_plain_http_fails(https):
    assert https["url"] == f"https://127.0.0.1:{https['port']}"
    trust = ssl.create_default_context(cafile=str(https["cert"]))  # this certificate and nothing else
    with httpx.Client(verify=trust, timeout=30) as client:
        health = wait_until(lambda: client.get(f"{https['url']}/healthz"), 60, "the HTTPS proxy answering")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    with pytest.raises(httpx.HTTPError) as plain:  # the proxy speaks TLS only
        httpx.get(f"http://127.0.0.1:{https['port']}/healthz", timeout=30)
    with pytest.raises(httpx.ConnectError) as untrusted:  # and a client that does not trust it stops
        httpx.get(f"{https['url']}/healthz", timeout=30)
    print(f"\n[tls] https /healthz 200; plain http: {type(plain.value).__name__}: {plain.value}; "
          f"untrusted client: {str(untrusted.value)[:80]}")
    assert "CERTIFICATE_VERIFY_FAILED" in str(untrusted.value)
