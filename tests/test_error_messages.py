"""Errors that help: each message names what the user gave and where, in the user's terms.

``init --key`` names ``--key``; key errors never show base58 alphabets, curve
orders or library internals; plain-HTTP failures do not say ``ssl:default``;
a float names its field; ``diff`` warns when the two sides are different
accounts; network failures exit with status 3; counts agree with their nouns.
"""

from __future__ import annotations

import re
from pathlib import Path

import multiformats
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pypds
from pypds import InvalidRecord, InvalidSigningKey, NetworkError, Repo, ResolveError, load_signing_key, parse_did_key
from pypds.cli import main
from pypds.errors import counted
from pypds.keys import K256_ORDER, P256_ORDER, PublicKey, base58btc_decode, base58btc_encode

from .conftest import DID, POST, post
from .netstubs import LOOPBACK, free_port

OTHER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
VALID_K256_DID = "did:key:zQ3shqwJEJyMBsBXCWyCBpUBMqxcon9oHB7mCvx4sSpMdLJwc"
#: What a key error must never show: the base58 alphabet, a curve order or another long number,
#: the wording of the libraries underneath.
INTERNALS = re.compile(
    r"alphabet|123456789ABCDEFGH|\d{20,}|Invalid EC key|Secret scalar|private_value|point type|multibase",
    re.IGNORECASE,
)


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- keys ------------------------------------------------------------------------------------------


def _did_key(raw: bytes) -> str:
    return "did:key:z" + base58btc_encode(raw)


BAD_DID_KEYS = [
    pytest.param("did:key:zgarbage0OIl", id="not-base58"),
    pytest.param("did:key:z", id="empty"),
    pytest.param(VALID_K256_DID[:-1], id="truncated"),
    pytest.param("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK", id="ed25519"),
    pytest.param(_did_key(b"\xe7\x01\x02" + bytes(32)), id="k256-point-not-on-curve"),
    pytest.param(_did_key(b"\x80\x24\x05" + bytes(32)), id="p256-bad-point-tag"),
    pytest.param(_did_key(b"\xe7\x01\x02" + bytes(31)), id="short-point"),
    pytest.param("did:key:z" + "2" * 300, id="very-long"),
]


@pytest.mark.parametrize("value", BAD_DID_KEYS)
def test_did_key_errors_show_no_alphabet_or_curve_internals(value):
    with pytest.raises(InvalidSigningKey) as caught:
        parse_did_key(value)
    message = str(caught.value)
    assert not INTERNALS.search(message), message
    assert "did:key" in message


@pytest.mark.parametrize("value", BAD_DID_KEYS)
def test_cli_did_key_errors_name_the_option(tmp_path, capsys, value):
    with Repo.create(tmp_path / "r", DID):
        pass
    code, out, err = run(capsys, "inspect", tmp_path / "r", "--key", value)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "'--key'" in err and not INTERNALS.search(err), err


def test_a_bad_base58_character_is_named_with_a_hint():
    with pytest.raises(InvalidSigningKey, match=r"'0' is not a base58 character \(base58 has no 0, O, I or l\)"):
        parse_did_key("did:key:zQ3sh0")
    with pytest.raises(InvalidSigningKey, match="Ed25519 key: atproto signs with secp256k1 or P-256"):
        parse_did_key("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")
    with pytest.raises(InvalidSigningKey, match="is it complete"):
        parse_did_key(VALID_K256_DID[:-1])


@pytest.mark.parametrize(
    ("secret", "curve"),
    [
        (bytes(32), "k256"),
        (K256_ORDER.to_bytes(32, "big"), "k256"),
        (b"\xff" * 32, "k256"),
        (bytes(32), "p256"),
        (P256_ORDER.to_bytes(32, "big"), "p256"),
        (b"\xff" * 32, "p256"),
    ],
)
def test_private_key_range_errors_show_no_curve_order(secret, curve):
    for value in (secret, secret.hex()):
        with pytest.raises(InvalidSigningKey, match="zero, or too large for the curve") as caught:
            load_signing_key(value, curve=curve)
        assert not INTERNALS.search(str(caught.value))


@pytest.mark.parametrize("curve", ["k256", "p256"])
def test_public_key_errors_show_no_library_wording(curve):
    with pytest.raises(InvalidSigningKey, match="not a point on the curve") as caught:
        PublicKey(curve, b"\x05" + b"\xff" * 32)
    assert not INTERNALS.search(str(caught.value))


@given(st.binary(max_size=64))
def test_base58btc_agrees_with_multiformats(raw):
    text = base58btc_encode(raw)
    assert "z" + text == multiformats.multibase.encode(raw, "base58btc")
    assert base58btc_decode(text) == raw


# -- init --key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("K256", "not hex, k256 or p256"),
        (VALID_K256_DID, "not hex, k256 or p256"),
        ("abc", "64 hex characters (32 bytes), not 3 characters"),
        ("00" * 32, "not a valid secp256k1 private key: zero, or too large for the curve"),
        ("ff" * 32, "not a valid secp256k1 private key: zero, or too large for the curve"),
    ],
)
def test_init_key_errors_name_the_key_option(tmp_path, capsys, value, message):
    code, out, err = run(capsys, "init", tmp_path / "r", "--did", DID, "--key", value)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Invalid value for '--key'" in err and message in err, err
    assert not INTERNALS.search(err), err
    assert not (tmp_path / "r").exists()


def test_init_with_a_key_and_a_key_file_names_both_options(tmp_path, capsys):
    key_file = tmp_path / "k.key"
    key_file.write_text("11" * 32)
    key_file.chmod(0o600)
    argv = ["init", tmp_path / "r", "--did", DID, "--key", "22" * 32, "--signing-key-file", key_file]
    code, _out, err = run(capsys, *argv)
    assert code == 2 and "--signing-key-file or --key HEX, not both" in err


# -- network ---------------------------------------------------------------------------------------


def test_plain_http_failures_do_not_say_ssl(tmp_path, capsys):
    closed = f"http://{LOOPBACK}:{free_port()}"
    _code, _out, err = run(capsys, "download", OTHER_DID, "-o", tmp_path / "c", "--plc-url", closed, "--retries", "0")
    assert "ssl:" not in err and "Connection refused" in err, err
    assert f"cannot connect to {LOOPBACK}:" in err
    config = pypds.ResolverConfig(plc_url=closed, nameservers=(f"{LOOPBACK}:{free_port()}",))
    with pytest.raises(ResolveError) as caught:
        pypds.resolve(OTHER_DID, config=config)
    assert "ssl:" not in str(caught.value) and "Connection refused" in str(caught.value)


def test_xrpc_failures_do_not_say_ssl(tmp_path, capsys):
    with Repo.create(tmp_path / "r", DID):
        pass
    pds = f"http://{LOOPBACK}:{free_port()}"
    code, _out, err = run(capsys, "push", tmp_path / "r", "--pds", pds, "--password", "x", "--retries", "0")
    assert code == 3
    assert "ssl:" not in err and "Connection refused" in err and "after 1 attempt" in err, err


def test_network_failures_exit_with_their_own_status(tmp_path, capsys):
    closed = f"http://{LOOPBACK}:{free_port()}"
    code, _out, err = run(capsys, "download", OTHER_DID, "-o", tmp_path / "copy", "--plc-url", closed, "--retries", "0")
    assert code == 3 and err.startswith("pypds: ")
    assert issubclass(ResolveError, NetworkError)
    code, _out, _err = run(capsys, "download", "not a handle", "-o", tmp_path / "copy")
    assert code == 2  # a usage error stays 2


def test_the_network_exit_status_is_documented(capsys):
    assert main(["--help"]) == 0
    assert "3 network failure" in " ".join(capsys.readouterr().out.split())
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "**3** a network failure" in readme


# -- floats ----------------------------------------------------------------------------------------


def test_the_float_error_names_the_field():
    with pytest.raises(InvalidRecord, match=r"not allowed in atproto data: embed\.aspectRatio\.width is 1\.5"):
        pypds.from_json({"$type": POST, "embed": {"aspectRatio": {"width": 1.5, "height": 2}}})
    with pytest.raises(InvalidRecord, match=r"tags\[1\] is 0\.5"):
        pypds.from_json({"$type": POST, "tags": ["a", 0.5]})
    with pytest.raises(InvalidRecord, match=r"not part of the atproto data model: tags\[1\] is 0\.5"):
        pypds.to_json({"tags": ["a", 0.5]})
    with pytest.raises(InvalidRecord, match=r"integer out of the 64-bit signed range: n is"):
        pypds.from_json({"$type": POST, "n": 1 << 64})


def test_the_float_error_of_a_put_names_the_record_and_the_field(repo, tmp_path, capsys):
    with pytest.raises(InvalidRecord, match=rf"in {POST}/k1: embed\.width is 1\.5"):
        repo.put(POST, "k1", {**post(1), "embed": {"width": 1.5}})
    record = tmp_path / "r.json"
    record.write_text('{"$type": "app.bsky.feed.post", "text": "x", "langs": [1.5]}')
    code, _out, err = run(capsys, "put", repo.path, POST, "k1", record)
    assert code == 2 and r"langs[0] is 1.5" in err, err


# -- diff ------------------------------------------------------------------------------------------


def test_diff_between_repositories_of_different_dids_warns(tmp_path, capsys):
    for name, did in (("a", DID), ("b", OTHER_DID), ("c", DID)):
        with Repo.create(tmp_path / name, did) as repo:
            repo.put(POST, "k1", post(1))
    code, out, err = run(capsys, "diff", tmp_path / "a", tmp_path / "b")
    assert code == 0 and "0 created, 0 updated, 0 deleted" in out
    assert err.startswith("pypds: warning: comparing two different accounts") and DID in err and OTHER_DID in err
    code, out, err = run(capsys, "diff", tmp_path / "a", tmp_path / "c")
    assert code == 0 and err == ""


# -- counts ----------------------------------------------------------------------------------------


def test_counted_agrees_with_its_noun():
    assert [counted(n, "node") for n in (0, 1, 2)] == ["0 nodes", "1 node", "2 nodes"]
    assert counted(1, "entry", "entries") == "1 entry" and counted(3, "entry", "entries") == "3 entries"


ONE_WRONG = re.compile(r"\b1 (nodes|records|keys|blocks|collections|blobs|record blocks|paths)\b")


def test_one_of_a_kind_reads_correctly(tmp_path, capsys):
    with Repo.create(tmp_path / "r", DID) as repo:
        repo.put(POST, "k1", post(1))
        repo.put_blob(b"one blob", "text/plain")
        repo.export_car(tmp_path / "r.car")
    outputs = []
    for argv in (
        ["verify", tmp_path / "r"],
        ["verify", tmp_path / "r.car"],
        ["mst", tmp_path / "r"],
        ["unpack", tmp_path / "r", "-o", tmp_path / "json"],
        ["inspect", tmp_path / "r"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        outputs.append(out + err)
    text = "\n".join(outputs)
    assert not ONE_WRONG.search(text), ONE_WRONG.search(text)
    assert re.search(r"1 node, root layer \d", text) and "1 node, 1 record block" in text
    assert re.search(r"repo-paths\s+passed\s+1 key\b", text) and re.search(r"records\s+passed\s+1 record\b", text)
    assert "unpacked 1 record in 1 collection" in text
    assert re.search(r"layer \d\s+1 node\s+1 key\b", text)
    assert re.search(r"index\s+passed\s+1 path\b", text)
