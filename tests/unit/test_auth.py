"""API keys: hashed store, scopes, rate and feedback share (core/auth.py)."""

import json
import stat

import pytest

from core.auth import AuthFailed, Authenticator, AuthSection, KeyStore, bearer, key_id


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    return KeyStore(tmp_path / "keys.json", env="EVOLVE_TEST_KEYS")


def failed(auth, key, scope) -> AuthFailed:
    with pytest.raises(AuthFailed) as info:
        auth.authorize(key, scope)
    return info.value


def test_store_keeps_only_the_hash_in_an_owner_only_file(store):
    record, key = store.create(["feedback", "predict"], name="web")
    text = store.path.read_text()
    assert key not in text and record.sha256 in text
    assert key_id(key) == record.id and record.scopes == ["feedback", "predict"]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_missing_unknown_revoked_keys_are_401_and_a_wrong_scope_403(store):
    auth = Authenticator(store, AuthSection())
    record, key = store.create(["predict"])
    assert auth.authorize(key, "predict")[0].id == record.id
    assert failed(auth, None, "predict").status == 401
    assert failed(auth, key[:-2] + "xx", "predict").status == 401  # right id, wrong secret
    assert failed(auth, "not-a-key", "predict").status == 401
    wrong = failed(auth, key, "feedback")
    assert wrong.status == 403 and "feedback" in wrong.reason
    store.revoke(record.id)
    assert failed(auth, key, "predict").status == 401  # a revoke takes effect without a restart


def test_admin_scope_covers_the_others(store):
    _, key = store.create(["admin"])
    auth = Authenticator(store, AuthSection())
    for scope in ("predict", "feedback", "admin"):
        auth.authorize(key, scope)


def test_over_the_rate_is_429_with_retry_after_then_recovers(store):
    clock = Clock()
    auth = Authenticator(store, AuthSection(rate_per_s=2, burst=3), clock=clock)
    _, key = store.create(["predict"])
    _, other = store.create(["predict"])
    for _ in range(3):
        auth.authorize(key, "predict")
    over = failed(auth, key, "predict")
    assert over.status == 429 and over.headers() == {"Retry-After": "1"}
    auth.authorize(other, "predict")  # each key has its own bucket
    clock.t += 0.5
    auth.authorize(key, "predict")


def test_one_key_cannot_take_over_the_feedback_share(store):
    auth = Authenticator(store, AuthSection(rate_per_s=1e6, burst=10**6, max_feedback_share=0.4, share_window=100),
                         clock=Clock())
    keys = [store.create(["feedback"])[1] for _ in range(4)]
    for i in range(40):  # four keys in turn: each a quarter
        auth.authorize(keys[i % 4], "feedback")
    refused = 0
    for _ in range(30):
        try:
            auth.authorize(keys[0], "feedback")
        except AuthFailed as exc:
            assert exc.status == 429 and "feedback" in exc.reason
            refused += 1
    assert refused > 0
    window = list(auth._feedback)
    assert window.count(store.records()[key_id(keys[0])].id) <= 0.4 * len(window) + 1


def test_keys_from_the_environment_win_over_the_file(store, monkeypatch):
    _, file_key = store.create(["predict"])
    other = KeyStore(store.path.parent / "other.json")
    _, env_key = other.create(["feedback"])
    monkeypatch.setenv("EVOLVE_TEST_KEYS", other.path.read_text())
    auth = Authenticator(store, AuthSection())
    auth.authorize(env_key, "feedback")
    assert failed(auth, file_key, "predict").status == 401


def test_a_bad_store_and_bad_scopes_are_refused_in_one_line(store):
    with pytest.raises(ValueError, match="scopes must be"):
        store.create(["write"])
    store.path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="not an Evolve key store"):
        store.records()


def test_on_by_default_beyond_loopback():
    assert not AuthSection().active("127.0.0.1")
    assert AuthSection().active("0.0.0.0")
    assert AuthSection(enabled=True).active("127.0.0.1")
    assert not AuthSection(enabled=False).active("0.0.0.0")


def test_bearer_header_or_x_evolve_key():
    assert bearer("Bearer evk_a_b") == "evk_a_b"
    assert bearer("bearer  evk_a_b ") == "evk_a_b"
    assert bearer(None, "evk_c_d") == "evk_c_d"
    assert bearer("Basic xyz") is None


def test_evolve_keys_create_list_revoke(tmp_path, capsys):
    from cluster.cli import main

    path = str(tmp_path / "keys.json")
    assert main(["keys", "create", "--scopes", "feedback", "--name", "alice", "--file", path]) == 0
    key = capsys.readouterr().out.splitlines()[0]
    store = KeyStore(path)
    auth = Authenticator(store, AuthSection())
    assert auth.authorize(key, "feedback")[0].name == "alice"
    assert main(["keys", "list", "--file", path]) == 0
    assert "alice" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id(key), "--file", path]) == 0
    assert failed(auth, key, "feedback").status == 401
    assert main(["keys", "create", "--scopes", "write", "--file", path]) == 1
    assert "scopes must be" in capsys.readouterr().err


def test_route_guard_names_the_sender_and_travels_as_a_snapshot(tmp_path):
    from types import SimpleNamespace

    from serving.auth_guard import AuthNotReady, RouteGuard, guard_settings

    section = AuthSection(keys_file=tmp_path / "keys.json", keys_env="EVOLVE_TEST_KEYS_UNSET")
    assert guard_settings(section, "127.0.0.1") is None  # loopback: off
    off = RouteGuard(None)
    assert off.client({"x-evolve-client": "u1"}, "feedback") == "u1" and off.client({}, "predict") is None
    with pytest.raises(AuthNotReady, match="evolve keys create"):
        guard_settings(section, "0.0.0.0")  # beyond loopback with no key: refused before serving
    record, key = KeyStore(section.keys_file).create(["feedback"])
    settings = guard_settings(section, "0.0.0.0")
    section.keys_file.unlink()  # a replica on another node: only the snapshot
    guard = RouteGuard(settings)
    assert guard.client({"authorization": f"Bearer {key}", "x-evolve-client": "forged"}, "feedback") == record.id
    assert guard.client({"x-evolve-key": key}, "feedback") == record.id
    with pytest.raises(AuthFailed) as info:
        guard.client({"x-evolve-client": "u1"}, "feedback")
    assert info.value.status == 401
    call = SimpleNamespace(invocation_metadata=lambda: [("Authorization", f"Bearer {key}")])
    with pytest.raises(AuthFailed) as info:
        guard.grpc_client(call, "predict")
    assert info.value.status == 403


def test_a_run_key_passes_without_ever_being_written(tmp_path):
    from serving.auth_guard import RouteGuard, guard_settings, with_run_key

    section = AuthSection(keys_file=tmp_path / "keys.json", keys_env="EVOLVE_TEST_KEYS_UNSET")
    KeyStore(section.keys_file).create(["admin"])
    before = section.keys_file.read_text()
    settings, key = with_run_key(guard_settings(section, "0.0.0.0"))
    assert key not in json.dumps(settings) and section.keys_file.read_text() == before
    guard = RouteGuard(settings)
    assert guard.client({"authorization": f"Bearer {key}"}, "feedback") == key_id(key)
    with pytest.raises(AuthFailed) as info:
        guard.client({"authorization": f"Bearer {key}"}, "admin")
    assert info.value.status == 403
    assert with_run_key(None) == (None, None)


def test_a_proxy_key_speaks_for_its_users_and_an_ordinary_key_cannot(tmp_path):
    from core.auth import mint
    from serving.auth_guard import RouteGuard

    section = AuthSection(enabled=True, rate_per_s=1, burst=1, keys_file=str(tmp_path / "none.json"),
                          keys_env="EVOLVE_TEST_NO_KEYS")
    plain_record, plain = mint(["predict"], "plain")
    proxy_record, proxy = mint(["predict"], "run", proxy=True)
    store_json = json.dumps([plain_record.model_dump()])
    guard = RouteGuard({"section": section.model_dump(mode="json"), "snapshot": store_json,
                        "internal": [proxy_record.model_dump()]})
    who = [guard.client({"authorization": f"Bearer {proxy}", "x-evolve-client": f"u{i}"}, "predict")
           for i in range(3)]  # burst 1 each: every user has its own bucket
    assert who == [f"{proxy_record.id}/u{i}" for i in range(3)]
    assert guard.client({"authorization": f"Bearer {plain}", "x-evolve-client": "u0"}, "predict") == plain_record.id
    with pytest.raises(AuthFailed) as over:  # an ordinary key cannot dodge its bucket by naming users
        guard.client({"authorization": f"Bearer {plain}", "x-evolve-client": "u1"}, "predict")
    assert over.value.status == 429
