"""`serving.tls` on a live Serve proxy: HTTPS with a certificate made here, plain HTTP refused.

The certificate is self-signed (the `cryptography` package), for 127.0.0.1; the client
trusts exactly it. `deploy_gateway` is the run's own way of starting Serve's proxy.
"""

import datetime as dt
import ipaddress
import ssl

import httpx
import pytest
import ray
from ray import serve

from core.config import ServingConfig
from core.tls import TLSSection
from serving.gateway import deploy_gateway, undeploy
from tests.conftest import free_port
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration


def self_signed(directory) -> tuple:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evolve-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    port = free_port()
    cfg = ServingConfig(host="127.0.0.1", http_port=port, tls=TLSSection(certfile=cert, keyfile=key))
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
