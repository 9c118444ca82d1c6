"""Every listener authenticated: gRPC with keys off is refused at config time, the docs routes
need a key when keys are on, and `serving.tls` gives Serve's HTTP proxy its certificate files."""

import json

import pytest
from fastapi.testclient import TestClient

from core.auth.keys import AuthSection, KeyStore
from core.config.loader import ConfigError, load_config


def test_grpc_with_keys_off_is_refused_in_one_line_with_exit_2(capsys):
    from cluster.cli import main

    args = ["run", "configs/default.yaml", "--set", "serving.grpc=true", "--set", "serving.auth.enabled=false"]
    assert main(args) == 2  # refused while loading the config: nothing started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "allow_open_grpc_unsafe" in err[0] and "every interface" in err[0], err
    unsafe = load_config("configs/default.yaml", ["serving.grpc=true", "serving.auth.enabled=false",
                                                  "serving.auth.allow_open_grpc_unsafe=true"])
    assert unsafe.serving.grpc and unsafe.serving.auth.enabled is False
    load_config("configs/default.yaml", ["serving.auth.enabled=false"])  # no gRPC: fine
    with pytest.raises(ConfigError, match="allow_open_grpc_unsafe"):
        load_config("configs/default.yaml", ["serving.grpc=true", "serving.auth.enabled=false"])


@pytest.fixture
def keyed_guard(tmp_path):
    from serving.auth_guard import RouteGuard, guard_settings

    section = AuthSection(enabled=True, keys_file=tmp_path / "keys.json", keys_env="EVOLVE_TEST_KEYS_UNSET")
    _, key = KeyStore(section.keys_file).create(["feedback"])  # any scope opens the docs
    guard = RouteGuard(guard_settings(section, "127.0.0.1"))  # the replica's guard: the docs routes ask it
    yield key
    del guard


@pytest.mark.parametrize("app, prefix", [("gateway", ""), ("feedback_app", "/v1")])
def test_docs_routes_need_a_key_when_keys_are_on(keyed_guard, app, prefix):
    import importlib

    api = importlib.import_module(f"serving.{app}").api
    client = TestClient(api, root_path=prefix)
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        bare = client.get(f"{prefix}{path}")
        assert bare.status_code == 401 and "API key" in bare.json()["detail"], path
        assert client.get(f"{prefix}{path}", headers={"Authorization": "Bearer evk_0_nope"}).status_code == 401
        assert client.get(f"{prefix}{path}", headers={"Authorization": f"Bearer {keyed_guard}"}).status_code == 200
    # Swagger UI's own assets are the package's files, not the deployment's: open
    assert client.get(f"{prefix}/static-offline-docs/swagger-ui.css").status_code == 200


def test_docs_routes_stay_open_when_keys_are_off():
    from serving import gateway
    from serving.auth_guard import RouteGuard

    guard = RouteGuard(None)  # noqa: F841 (the replica's guard, held as a replica holds it)
    assert TestClient(gateway.api).get("/openapi.json").status_code == 200


def test_tls_section_names_missing_files_and_gives_serve_its_options(tmp_path):
    from core.auth.tls import TLSSection

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls = TLSSection(certfile=cert, keyfile=key)
    assert [p.split(":")[0] for p in tls.problems()] == [f"serving.tls.certfile {cert}", f"serving.tls.keyfile {key}"]
    cert.write_text("x")
    key.write_text("x")
    assert tls.problems() == []
    assert tls.http_options() == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    cfg = load_config("configs/default.yaml", [f"serving.tls={json.dumps({'certfile': str(cert), 'keyfile': str(key)})}"])
    assert cfg.serving.tls == tls
    with pytest.raises(ConfigError, match="keyfile"):
        load_config("configs/default.yaml", [f"serving.tls={json.dumps({'certfile': str(cert)})}"])
