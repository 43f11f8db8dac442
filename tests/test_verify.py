"""verify_car and Repo.verify report every check; damage in the store is found."""

from __future__ import annotations

import pytest

from pypds import Outcome, Repo, generate_signing_key, verify_car
from pypds.sync.verify import CHECKS

from .conftest import DID, POST, post


@pytest.fixture
def filled(repo):
    with repo.batch() as batch:
        for i in range(40):
            batch.put(POST, f"r{i:03d}", post(i))
    repo.put_blob(b"blob bytes", "text/plain")
    return repo


def test_valid_repo_passes_every_check(filled):
    report = filled.verify(key=filled.did_key)
    assert report.ok, str(report)
    names = [c.name for c in report.checks]
    assert names == [
        "commit",
        "did",
        "signature",
        "block-hashes",
        "mst",
        "completeness",
        "repo-paths",
        "records",
        "index",
        "blob-files",
    ]
    assert all(c.outcome is Outcome.PASSED for c in report.checks)
    assert report.records == 40 and report.commit == filled.head and report.did == DID
    assert all(name in CHECKS for name in names)


def test_valid_car_passes_and_skips_what_was_not_asked(filled):
    report = verify_car(filled.export_car())
    assert report.ok
    assert report["did"].outcome is Outcome.SKIPPED
    assert report["signature"].outcome is Outcome.SKIPPED
    assert "result" in str(report) and "OK" in str(report)


REPO_CHECKS = ["commit", "did", "signature", "block-hashes", "mst", "completeness", "repo-paths", "records"]
REPO_CHECKS += ["index", "blob-files"]


def test_checks_after_the_first_failure_are_not_run_in_report_order(filled):
    report = filled.verify(key=generate_signing_key().did_key)
    assert not report.ok
    assert [c.name for c in report.failures] == ["signature"]
    after = [c for c in report.checks[[c.name for c in report.checks].index("signature") + 1 :]]
    assert after and all(c.outcome is Outcome.NOT_RUN for c in after)
    assert [c.name for c in report.checks] == REPO_CHECKS

    report = filled.verify(did="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", key=filled.did_key)
    assert [(c.name, c.outcome) for c in report.checks][:4] == [
        ("commit", Outcome.PASSED),
        ("did", Outcome.FAILED),
        ("signature", Outcome.NOT_RUN),
        ("block-hashes", Outcome.NOT_RUN),
    ]


def test_a_tree_failure_keeps_the_report_order(filled):
    conn = filled._state.store.conn
    conn.execute("DELETE FROM blocks WHERE cid = ?", (filled.find_cid(POST, "r007").cid_bytes,))
    report = filled.verify()
    assert [c.name for c in report.checks] == REPO_CHECKS
    assert [c.name for c in report.failures] == ["completeness"]
    failed = [c.name for c in report.checks].index("completeness")
    assert all(c.outcome is not Outcome.PASSED for c in report.checks[failed:])


def _corrupt_block(repo, cid):
    conn = repo._state.store.conn
    (data,) = conn.execute("SELECT data FROM blocks WHERE cid = ?", (cid.cid_bytes,)).fetchone()
    conn.execute("UPDATE blocks SET data = ? WHERE cid = ?", (data[:-1] + bytes([data[-1] ^ 1]), cid.cid_bytes))


def test_a_damaged_stored_record_is_found(filled):
    _corrupt_block(filled, filled.find_cid(POST, "r007"))
    report = filled.verify()
    assert not report.ok
    assert report.failures[0].name == "block-hashes"
    assert filled.find_cid(POST, "r007").encode() in report.failures[0].detail
    assert report["records"].outcome is Outcome.NOT_RUN


def test_a_damaged_stored_mst_node_is_found(filled):
    _corrupt_block(filled, filled.commit().data)
    report = filled.verify()
    assert report.failures[0].name == "block-hashes"


def test_a_missing_stored_record_is_found(filled):
    cid = filled.find_cid(POST, "r011")
    filled._state.store.conn.execute("DELETE FROM blocks WHERE cid = ?", (cid.cid_bytes,))
    report = filled.verify()
    assert [c.name for c in report.failures] == ["completeness"]
    assert cid.encode() in report.failures[0].detail


def test_a_damaged_blob_file_is_found(filled):
    path = next(p for p in (filled.path / "blobs").glob("*/*"))
    path.write_bytes(b"tampered")
    report = filled.verify()
    assert [c.name for c in report.failures] == ["blob-files"]


def test_verify_car_of_garbage_fails_framing_and_runs_nothing_else():
    report = verify_car(b"\x05hello")
    assert report.failures[0].name == "car-framing"
    assert all(c.outcome is Outcome.NOT_RUN for c in report.checks[1:])


def test_verify_on_a_repo_imported_from_car(filled, tmp_path):
    with Repo.from_car(tmp_path / "copy", filled.export_car()) as copy:
        assert copy.verify(key=filled.did_key).ok


def test_a_damaged_paths_index_is_found(filled):
    conn = filled._state.store.conn
    conn.execute("DELETE FROM paths WHERE path = ?", (f"{POST}/r005".encode(),))
    report = filled.verify()
    assert [c.name for c in report.failures] == ["index"]
    assert "r005" in report.failures[0].detail
