"""Identifier syntax must match the atproto interop fixtures exactly."""

from __future__ import annotations

import pytest

from pypds import InvalidDid, InvalidRepoPath, InvalidTid
from pypds.syntax import (
    check_collection,
    check_did,
    check_record_key,
    check_tid,
    is_valid_did,
    is_valid_mst_key,
    is_valid_nsid,
    is_valid_record_key,
    is_valid_tid,
    repo_path,
    split_repo_path,
)

from .conftest import REFERENCE, load_json, syntax_lines

VALIDATORS = {
    "nsid": is_valid_nsid,
    "recordkey": is_valid_record_key,
    "tid": is_valid_tid,
    "did": is_valid_did,
}


def _cases(kind: str) -> list:
    """(validator name, line) for every non-blank line of every *_syntax_<kind>.txt.

    Lines are kept exactly as written: some are deliberately padded with spaces.
    """
    params = []
    for name in VALIDATORS:
        for line in syntax_lines(f"{name}_syntax_{kind}.txt"):
            if line == "":
                continue
            params.append(pytest.param(name, line, id=f"{name}-{line[:40]!r}"))
    return params


VALID_CASES = _cases("valid")
INVALID_CASES = _cases("invalid")


def test_fixture_files_are_loaded_with_padding_intact():
    # guards the parametrization itself: every file contributes cases, and the
    # whitespace-padded NSIDs survive untrimmed
    for kind, cases in (("valid", VALID_CASES), ("invalid", INVALID_CASES)):
        names = {p.values[0] for p in cases}
        assert names == set(VALIDATORS), kind
    invalid_nsids = {p.values[1] for p in INVALID_CASES if p.values[0] == "nsid"}
    assert " one.two.three" in invalid_nsids
    assert "one.two.three " in invalid_nsids


@pytest.mark.parametrize(("name", "line"), VALID_CASES)
def test_interop_valid_identifier_is_accepted(name, line):
    assert VALIDATORS[name](line) is True


@pytest.mark.parametrize(("name", "line"), INVALID_CASES)
def test_interop_invalid_identifier_is_rejected(name, line):
    assert VALIDATORS[name](line) is False


@pytest.mark.parametrize("fn", list(VALIDATORS.values()) + [is_valid_mst_key])
@pytest.mark.parametrize("value", [None, 123, b"app.bsky.feed.post", ["a.b.c"]])
def test_validators_return_false_for_non_strings(fn, value):
    assert fn(value) is False


def test_record_key_of_512_chars_is_valid_and_513_is_not():
    assert is_valid_record_key("a" * 512)
    assert not is_valid_record_key("a" * 513)


@pytest.mark.parametrize("rkey", [".", ".."])
def test_dot_and_dotdot_are_not_record_keys(rkey):
    assert not is_valid_record_key(rkey)
    with pytest.raises(InvalidRepoPath):
        check_record_key(rkey)


def test_nsid_longer_than_317_chars_is_rejected():
    # 253-char domain authority + 63-char name: the longest NSID the spec allows
    authority = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(authority) == 253
    longest = authority + "." + "n" * 63
    assert len(longest) == 317
    assert is_valid_nsid(longest)
    # every segment individually within 63 chars, but 318 chars overall
    too_long = ".".join(["a" * 63] * 4) + "." + "n" * 62
    assert len(too_long) == 318
    assert not is_valid_nsid(too_long)


@pytest.mark.parametrize("value", ["2222222222222\n", "\n2222222222222", "2222222222222 "])
def test_tid_with_surrounding_whitespace_is_rejected(value):
    assert not is_valid_tid(value)


def test_check_helpers_raise_the_documented_errors():
    assert check_did("did:plc:abc") == "did:plc:abc"
    with pytest.raises(InvalidDid):
        check_did("did:plc:")
    assert check_tid("3jzfcijpj2z2a") == "3jzfcijpj2z2a"
    with pytest.raises(InvalidTid):
        check_tid("3jzfcijpj2z2")
    assert check_collection("app.bsky.feed.post") == "app.bsky.feed.post"
    with pytest.raises(InvalidRepoPath):
        check_collection("app.bsky")


# -- repo paths -----------------------------------------------------------------


def test_repo_path_joins_collection_and_rkey():
    assert repo_path("app.bsky.feed.post", "3jzfcijpj2z2a") == "app.bsky.feed.post/3jzfcijpj2z2a"


def test_split_repo_path_inverts_repo_path():
    path = repo_path("com.example.fooBar", "self:~.-_")
    assert split_repo_path(path) == ("com.example.fooBar", "self:~.-_")


@pytest.mark.parametrize(
    ("collection", "rkey"),
    [
        ("app.bsky", "self"),  # collection is not an NSID
        ("app.bsky.feed.post", ""),
        ("app.bsky.feed.post", "."),
        ("app.bsky.feed.post", ".."),
        ("app.bsky.feed.post", "a/b"),
        ("app.bsky.feed.post", "a b"),
        ("app.bsky.feed.post/x", "self"),
        (["app.bsky.feed.post"], "self"),  # unhashable: must not reach the known-collections set
        (None, "self"),
        ("app.bsky.feed.post", ["self"]),
    ],
)
def test_repo_path_rejects_invalid_parts(collection, rkey):
    with pytest.raises(InvalidRepoPath):
        repo_path(collection, rkey)


@pytest.mark.parametrize("path", [None, b"app.bsky.feed.post/self", 7])
def test_split_repo_path_rejects_non_strings(path):
    with pytest.raises(InvalidRepoPath):
        split_repo_path(path)


def test_invalid_repo_path_is_a_value_error():
    # callers may catch ValueError as well as the pypds hierarchy
    with pytest.raises(ValueError):
        split_repo_path("nope")


# -- reference MST key / repo path fixture ----------------------------------------------

_VALIDITY = load_json(REFERENCE / "mst_key_validity.json")


def _key_id(value: str) -> str:
    return f"{value[:40]!r}(len={len(value)})"


@pytest.mark.parametrize(
    ("key", "valid"),
    [pytest.param(e["key"], e["valid"], id=_key_id(e["key"])) for e in _VALIDITY["mst_keys"]],
)
def test_reference_mst_key_validity(key, valid):
    assert is_valid_mst_key(key) is valid


@pytest.mark.parametrize(
    ("path", "valid"),
    [pytest.param(e["path"], e["valid"], id=_key_id(e["path"])) for e in _VALIDITY["repo_paths"]],
)
def test_reference_repo_path_validity(path, valid):
    if valid:
        collection, rkey = split_repo_path(path)
        assert f"{collection}/{rkey}" == path
        assert repo_path(collection, rkey) == path
    else:
        with pytest.raises(InvalidRepoPath):
            split_repo_path(path)


def test_reference_fixture_has_both_valid_and_invalid_cases():
    for section in ("mst_keys", "repo_paths"):
        flags = {e["valid"] for e in _VALIDITY[section]}
        assert flags == {True, False}, section


def test_mst_key_length_limit_is_1024():
    key = "coll/" + "a" * (1024 - 5)
    assert len(key) == 1024
    assert is_valid_mst_key(key)
    assert not is_valid_mst_key(key + "a")


def test_repo_path_over_1024_chars_is_rejected():
    path = "com.example.coll/" + "a" * (1025 - 17)
    assert len(path) == 1025
    with pytest.raises(InvalidRepoPath):
        split_repo_path(path)
