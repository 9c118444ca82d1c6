"""API keys: hashed store, scopes, rate and feedback share (core/auth/keys.py)."""

import json
import stat

import pytest

from core.auth.keys import AuthFailed, Authenticator, AuthSection, KeyStore, bearer, key_id


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
    from core.auth.keys import mint
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


def test_idle_buckets_are_dropped_and_their_number_is_bounded(store):
    clock = Clock()
    section = AuthSection(rate_per_s=10, burst=20, max_senders=50)  # a bucket refills in 2 s
    auth = Authenticator(store, section, clock=clock)
    record, proxy = mint_proxy(store)
    for i in range(40):  # forty named users of a proxy key: forty buckets
        auth.authorize(proxy, "predict", f"u{i}")
    assert auth.tracked_senders() == 40
    clock.t += 1.0
    auth.authorize(proxy, "predict", "u0")  # not idle long enough to refill: all kept
    assert auth.tracked_senders() == 40
    clock.t += 1.5  # u1..u39 idle 2.5 s, full again: dropped; u0 (1.5 s) kept
    auth.authorize(proxy, "predict", "u40")
    assert auth.tracked_senders() == 2
    for i in range(500):  # a flood of distinct users at one instant: never above max_senders
        auth.authorize(proxy, "predict", f"flood{i}")
    assert auth.tracked_senders() == 50
    for _ in range(21):  # an emptied bucket is not forgotten while it refills
        try:
            auth.authorize(proxy, "predict", "busy")
        except AuthFailed:
            break
    else:
        raise AssertionError("burst 20 was never exceeded")
    clock.t += 0.05
    assert failed_user(auth, proxy, "busy").status == 429


def mint_proxy(store):
    from core.auth.keys import mint

    record, key = mint(["predict", "feedback"], "run", proxy=True)
    store.extra.append(record)
    return record, key


def failed_user(auth, key, user) -> AuthFailed:
    with pytest.raises(AuthFailed) as info:
        auth.authorize(key, "predict", user)
    return info.value


def test_feedback_share_counts_leave_with_the_window(store):
    auth = Authenticator(store, AuthSection(rate_per_s=1e6, burst=10**6, max_feedback_share=0.9, share_window=10),
                         clock=Clock())
    _, proxy = mint_proxy(store)
    for i in range(100):  # a hundred users, one feedback each, through a window of ten
        auth.authorize(proxy, "feedback", f"u{i}")
    assert len(auth._feedback) == 10 and len(auth._shares) == 10  # the other ninety left nothing behind


def test_grpc_turns_keys_on_even_on_loopback(tmp_path):
    from serving.auth_guard import AuthNotReady, guard_settings

    assert AuthSection().active("127.0.0.1", grpc=True)  # Serve's gRPC proxy binds [::]
    assert not AuthSection(allow_open_grpc_unsafe=True).active("127.0.0.1", grpc=True)
    assert not AuthSection(enabled=False).active("127.0.0.1", grpc=True)  # the config refuses this (test_listeners)
    section = AuthSection(keys_file=tmp_path / "keys.json", keys_env="EVOLVE_TEST_KEYS_UNSET")
    with pytest.raises(AuthNotReady) as info:
        guard_settings(section, "127.0.0.1", grpc=True)
    assert "serving.grpc" in str(info.value) and "allow_open_grpc_unsafe" in str(info.value)
    KeyStore(section.keys_file).create(["predict"])
    assert guard_settings(section, "127.0.0.1", grpc=True) is not None
    assert guard_settings(section, "127.0.0.1") is None


def test_a_revoke_the_file_cannot_carry_is_refused_with_the_reason(store, monkeypatch, capsys):
    from cluster.cli import main
    from core.auth.keys import RevokeRefused

    record, key = store.create(["predict"])
    monkeypatch.setenv("EVOLVE_TEST_KEYS", store.path.read_text())  # runs read this, not the file
    with pytest.raises(RevokeRefused, match=r"\$EVOLVE_TEST_KEYS is set and wins over"):
        store.revoke(record.id)
    assert not store._file_records()[record.id].revoked  # nothing half done
    args = ["keys", "revoke", record.id, "--file", str(store.path), "--env", "EVOLVE_TEST_KEYS"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "revoke refused" in err[0] and "would not take effect" in err[0]
    monkeypatch.delenv("EVOLVE_TEST_KEYS")
    assert main(args) == 0 and store.records()[record.id].revoked


def test_any_valid_key_will_do_where_no_scope_is_asked(store):
    auth = Authenticator(store, AuthSection())
    record, key = store.create(["feedback"])
    assert auth.authorize(key, None)[1] == record.id
    assert failed(auth, None, None).status == 401
