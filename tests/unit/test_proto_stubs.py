"""gRPC stubs are rebuilt when missing or older than evolve.proto (a pull that changed the service)."""

from __future__ import annotations

import os
import shutil

import serving.proto.build as build


def _in(tmp_path, monkeypatch):
    here = tmp_path / "serving" / "proto"
    here.mkdir(parents=True)
    shutil.copy(build.PROTO, here / "evolve.proto")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build, "HERE", here)
    monkeypatch.setattr(build, "PROTO", here / "evolve.proto")
    return here


def test_missing_stubs_are_built(tmp_path, monkeypatch):
    here = _in(tmp_path, monkeypatch)
    build.ensure_stubs()
    assert all((here / name).exists() for name in build.OUTPUTS) and not build.stale()


def test_stubs_older_than_the_proto_are_rebuilt_and_fresh_ones_left_alone(tmp_path, monkeypatch):
    here = _in(tmp_path, monkeypatch)
    for name in build.OUTPUTS:
        (here / name).write_text("# generated from an older evolve.proto\n")
        os.utime(here / name, (1, 1))
    build.ensure_stubs()
    assert not build.stale()  # regenerated from the current proto
    stamp = (here / build.OUTPUTS[0]).stat().st_mtime
    (here / build.OUTPUTS[0]).write_text("# edited by hand\n")
    os.utime(here / build.OUTPUTS[0], (stamp, stamp))
    build.ensure_stubs()  # newer than the proto: not regenerated
    assert (here / build.OUTPUTS[0]).read_text() == "# edited by hand\n"
