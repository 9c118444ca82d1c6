"""The run's key book and the replicas that follow it (core/auth/key_book.py), without Ray.

The book reads a real key file as `evolve keys` writes it; a follower asks the book for news
as a replica does (through a plain call here, through the named actor in a run).
"""

import json

import pytest

from core.auth.keys import AuthFailed, Authenticator, AuthSection, KeyStore, mint
from core.auth.key_book import FollowedKeys, KeyBook


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    return KeyStore(tmp_path / "keys.json")


def _refused(auth, key) -> int:
    with pytest.raises(AuthFailed) as info:
        auth.authorize(key, "predict")
    return info.value.status


def test_a_revoke_in_the_file_reaches_every_follower_by_the_next_refresh(store):
    record, key = store.create(["predict"])
    clock = Clock()
    book = KeyBook(store.text, refresh_s=1.0, clock=clock)
    replicas = [FollowedKeys(book.since, "[]") for _ in range(2)]  # started before the key existed
    auths = [Authenticator(r, AuthSection()) for r in replicas]
    for r, auth in zip(replicas, auths):
        assert _refused(auth, key) == 401  # the snapshot they were given knows no key
        assert r.poll()
        assert auth.authorize(key, "predict")[0].id == record.id
        assert not r.poll()  # nothing new
    store.revoke(record.id)
    assert all(not r.poll() for r in replicas)  # the book re-reads at most every refresh_s
    clock.t += 1.0
    assert all(r.poll() for r in replicas)
    assert [_refused(auth, key) for auth in auths] == [401, 401]


def test_a_rotation_takes_the_new_key_and_drops_the_old(store):
    old_record, old = store.create(["predict"])
    clock = Clock()
    book = KeyBook(store.text, refresh_s=0.5, clock=clock)
    follower = FollowedKeys(book.since, store.text())
    auth = Authenticator(follower, AuthSection())
    auth.authorize(old, "predict")
    new_record, new = store.create(["predict"])
    store.revoke(old_record.id)
    clock.t += 0.5
    assert follower.poll()
    assert auth.authorize(new, "predict")[0].id == new_record.id and _refused(auth, old) == 401


def test_a_bad_store_keeps_the_last_good_keys_and_says_why(store):
    record, key = store.create(["predict"])
    clock = Clock()
    book = KeyBook(store.text, refresh_s=1.0, clock=clock)
    follower = FollowedKeys(book.since, "[]")
    follower.poll()
    store.path.write_text("{not json")  # a hand edit gone wrong
    clock.t += 1.0
    assert not follower.poll()
    assert "not an Evolve key store" in book.status()["error"]
    Authenticator(follower, AuthSection()).authorize(key, "predict")


def test_an_unreachable_book_keeps_what_was_heard_and_a_restarted_one_is_heard_again(store):
    record, key = store.create(["predict"])
    book = KeyBook(store.text, first_version=1)
    answers = {"book": book}

    def fetch(version):
        if answers["book"] is None:
            raise ConnectionError("the key book's node is gone")
        return answers["book"].since(version)

    follower = FollowedKeys(fetch, "[]", every_s=60).start()  # start() asks once before it returns
    try:
        auth = Authenticator(follower, AuthSection())
        auth.authorize(key, "predict")
        answers["book"] = None
        follower._poll_quietly()
        assert "gone" in follower.error
        auth.authorize(key, "predict")  # kept
        store.revoke(record.id)
        answers["book"] = KeyBook(store.text, first_version=1_000)  # restarted: versions start beyond
        follower._poll_quietly()
        assert follower.error is None and _refused(auth, key) == 401
    finally:
        follower.close()


def test_the_run_s_own_keys_travel_beside_the_book(store):
    record, run_key = mint(["predict", "feedback"], "run", proxy=True)
    book = KeyBook(store.text)
    follower = FollowedKeys(book.since, "[]", extra=[record.model_dump()])
    follower.poll()
    auth = Authenticator(follower, AuthSection())
    assert auth.authorize(run_key, "feedback", "user1")[1] == f"{record.id}/user1"
    assert json.loads(book.text) == []  # never written to the store
