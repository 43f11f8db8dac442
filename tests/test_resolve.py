"""Identity resolution (pypds.net.identity) against loopback DNS and HTTP stubs.

A handle resolves through DNS TXT ``_atproto.<handle>`` and
``/.well-known/atproto-did``; a DID through the PLC directory or
``/.well-known/did.json``; the DID document gives the PDS and the signing
key. Every malformed, missing or unreachable answer is a typed error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiohttp.web import Request, Response

from pypds import (
    HandleMismatch,
    InvalidDid,
    InvalidHandle,
    InvalidInput,
    ResolveError,
    ResolverConfig,
    generate_signing_key,
    resolve,
)
from pypds.net.identity import DEFAULT_PLC_URL, identity_from_document
from pypds.syntax import is_valid_handle

from .conftest import DID
from .netstubs import DnsStub, WebStub, did_document, free_port, stub_config

HANDLE = "alice.test"
OTHER_DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
PDS = "http://127.0.0.1:2583"
KEY = generate_signing_key("k256")
P256_KEY = generate_signing_key("p256")


@pytest.fixture(scope="module")
def web():
    with WebStub() as stub:
        yield stub


@pytest.fixture(scope="module")
def dns_stub():
    with DnsStub() as stub:
        yield stub


@pytest.fixture(autouse=True)
def clean(web, dns_stub):
    """Each test starts with empty stubs holding one good DID document."""
    for table in (web.plc, web.handles, web.did_web, web.requests, dns_stub.records, dns_stub.queries):
        table.clear()
    dns_stub.drop = False
    web.plc[DID] = did_document(DID, key=KEY.public_key, pds=PDS, handle=HANDLE)
    yield


def config(web, dns_stub, **overrides) -> ResolverConfig:
    return stub_config(web, dns_stub, **overrides)


# -- handles ----------------------------------------------------------------------------


def test_handle_resolves_through_dns_txt(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    identity = resolve(HANDLE, config=config(web, dns_stub))
    assert (identity.did, identity.handle, identity.pds) == (DID, HANDLE, PDS)
    assert identity.signing_key == KEY.public_key
    assert identity.did_key == KEY.did_key
    assert identity.document["id"] == DID
    assert f"_atproto.{HANDLE}" in dns_stub.queries


def test_handle_resolves_through_well_known(web, dns_stub):
    web.handles[HANDLE] = DID + "\n"
    identity = resolve("@" + HANDLE.upper(), config=config(web, dns_stub))
    assert identity.did == DID and identity.handle == HANDLE


def test_dns_and_well_known_agreeing_is_fine(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = ["something else", f"did={DID}"]
    web.handles[HANDLE] = DID
    assert resolve(HANDLE, config=config(web, dns_stub)).did == DID


def slow_answer(text: str, delay: float, seen: dict[str, bool]) -> Callable[[Request], Awaitable[Response]]:
    """A stub answer that waits ``delay`` seconds first; ``seen`` records whether it started and was cut."""

    async def answer(_request: Request) -> Response:
        seen["started"] = True
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        return Response(text=text)

    return answer


def test_when_dns_and_well_known_disagree_the_first_answer_wins(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    web.handles[HANDLE] = slow_answer(OTHER_DID, 1.0, {})
    assert resolve(HANDLE, config=config(web, dns_stub)).did == DID


def test_the_first_answer_must_still_be_claimed_by_its_did_document(web, dns_stub):
    """A quick answer naming another account loses to nothing: that account's document does not
    claim the handle, and a slower correct answer is not waited for."""
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    dns_stub.drop = True  # the DNS answer that would be right never comes
    web.handles[HANDLE] = OTHER_DID
    web.plc[OTHER_DID] = did_document(OTHER_DID, key=KEY.public_key, pds=PDS, handle="mallory.test")
    with pytest.raises(HandleMismatch, match=r"points to did:plc:ewvi7nxzyoun6zhxrhs64oiz.*mallory\.test"):
        resolve(HANDLE, config=config(web, dns_stub))


def test_a_dns_server_that_never_answers_does_not_delay_the_well_known_answer(web, dns_stub):
    dns_stub.drop = True
    web.handles[HANDLE] = DID
    started = time.monotonic()
    assert resolve(HANDLE, config=config(web, dns_stub, timeout=10.0)).did == DID
    assert time.monotonic() - started < 2.0  # not the 10 s DNS timeout


def test_a_slow_well_known_does_not_delay_a_dns_answer_and_is_cancelled(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    seen: dict[str, bool] = {}
    web.handles[HANDLE] = slow_answer(DID, 10.0, seen)
    started = time.monotonic()
    assert resolve(HANDLE, config=config(web, dns_stub, timeout=20.0)).did == DID
    assert time.monotonic() - started < 2.0
    deadline = time.monotonic() + 5
    while not seen.get("cancelled") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == {"started": True, "cancelled": True}, "the well-known request was left running"


def test_a_lookup_that_fails_at_once_waits_for_the_other(web, dns_stub):
    web.handles[HANDLE] = slow_answer(DID, 0.3, {})  # DNS answers NXDOMAIN long before
    assert resolve(HANDLE, config=config(web, dns_stub)).did == DID
    assert f"_atproto.{HANDLE}" in dns_stub.queries


def test_when_both_lookups_fail_both_reasons_are_given(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = ["did=not-a-did"]
    web.handles[HANDLE] = 500
    with pytest.raises(ResolveError, match=r"DNS TXT _atproto\.alice\.test: .*invalid DID.*atproto-did: .*HTTP 500"):
        resolve(HANDLE, config=config(web, dns_stub))


def test_handle_with_neither_record_does_not_resolve(web, dns_stub):
    with pytest.raises(ResolveError, match=f"handle {HANDLE} did not resolve"):
        resolve(HANDLE, config=config(web, dns_stub))


def test_several_did_txt_records_are_ambiguous(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}", f"did={OTHER_DID}"]
    with pytest.raises(ResolveError, match="several did= TXT records"):
        resolve(HANDLE, config=config(web, dns_stub))


@pytest.mark.parametrize("bad", ["did=not-a-did", "did=did:plc:", "did=did:plc:abc def"])
def test_invalid_did_in_dns_is_an_error(web, dns_stub, bad):
    dns_stub.records[f"_atproto.{HANDLE}"] = [bad]
    with pytest.raises(ResolveError, match="invalid DID"):
        resolve(HANDLE, config=config(web, dns_stub))


@pytest.mark.parametrize("bad", ["hello", "did:plc:w4x bfz", "<html>did:plc:x</html>", ""])
def test_invalid_did_in_well_known_is_an_error(web, dns_stub, bad):
    web.handles[HANDLE] = bad
    with pytest.raises(ResolveError, match="invalid DID"):
        resolve(HANDLE, config=config(web, dns_stub))


def test_a_bad_answer_from_one_source_does_not_hide_a_good_one(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    web.handles[HANDLE] = 500
    assert resolve(HANDLE, config=config(web, dns_stub)).did == DID


def test_handle_not_claimed_by_the_did_document_is_a_mismatch(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    web.plc[DID] = did_document(DID, key=KEY.public_key, pds=PDS, handle="mallory.test")
    with pytest.raises(HandleMismatch, match=r"does not claim at://alice\.test"):
        resolve(HANDLE, config=config(web, dns_stub))


def test_silent_dns_server_alone_is_a_timeout_error(web, dns_stub):
    dns_stub.drop = True
    with pytest.raises(ResolveError, match="timed out"):
        resolve(HANDLE, config=config(web, dns_stub, timeout=0.3, well_known=False))


@pytest.mark.parametrize(
    "bad", ["alice", "-alice.test", "alice..test", "alice.123", "al ice.test", "a" * 300 + ".test"]
)
def test_invalid_handle_input_is_refused(web, dns_stub, bad):
    assert not is_valid_handle(bad)
    with pytest.raises(InvalidHandle):
        resolve(bad, config=config(web, dns_stub))


def test_invalid_did_input_is_refused(web, dns_stub):
    with pytest.raises(InvalidDid):
        resolve("did:plc:", config=config(web, dns_stub))


# -- DIDs -----------------------------------------------------------------------------------


def test_did_plc_resolves_and_its_handle_is_verified_back(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={DID}"]
    identity = resolve(DID, config=config(web, dns_stub))
    assert (identity.did, identity.handle, identity.pds) == (DID, HANDLE, PDS)


def test_did_whose_claimed_handle_points_elsewhere_has_no_handle(web, dns_stub):
    dns_stub.records[f"_atproto.{HANDLE}"] = [f"did={OTHER_DID}"]
    identity = resolve(DID, config=config(web, dns_stub))
    assert identity.did == DID and identity.handle is None


def test_did_handle_check_can_be_turned_off(web, dns_stub):
    identity = resolve(DID, config=config(web, dns_stub, verify_handle=False))
    assert identity.handle == HANDLE  # as claimed, unverified
    assert dns_stub.queries == [] and web.requests == [("127.0.0.1:" + web.url.rsplit(":", 1)[1], f"/{DID}")]


def test_did_web_resolves_through_its_host(web, dns_stub):
    did = "did:web:carol.test"
    web.did_web["carol.test"] = did_document(did, key=P256_KEY.public_key, pds=PDS)
    identity = resolve(did, config=config(web, dns_stub))
    assert identity.did == did and identity.pds == PDS
    assert identity.signing_key == P256_KEY.public_key
    assert ("carol.test", "/.well-known/did.json") in web.requests


def test_did_web_with_a_port_names_host_and_port(web, dns_stub):
    did = "did:web:localhost%3A8443"
    web.did_web["localhost:8443"] = did_document(did, key=KEY.public_key, pds=PDS)
    assert resolve(did, config=config(web, dns_stub)).did == did


@pytest.mark.parametrize(
    "did",
    ["did:web:carol.test:user:alice", "did:web:bad_host", "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"],
)
def test_unsupported_dids_are_refused(web, dns_stub, did):
    with pytest.raises(ResolveError):
        resolve(did, config=config(web, dns_stub))


@pytest.mark.parametrize(("status", "message"), [(None, "not found"), (410, "deactivated"), (500, "HTTP 500")])
def test_plc_errors_are_resolve_errors(web, dns_stub, status, message):
    web.plc[DID] = status
    with pytest.raises(ResolveError, match=message):
        resolve(DID, config=config(web, dns_stub))


def test_unreachable_plc_directory_is_a_resolve_error(web, dns_stub):
    started = time.monotonic()
    with pytest.raises(ResolveError, match=r"127\.0\.0\.1"):
        resolve(DID, config=config(web, dns_stub, plc_url=f"http://127.0.0.1:{free_port()}"))
    assert time.monotonic() - started < 3


def test_unreachable_well_known_host_is_a_resolve_error(web, dns_stub):
    with pytest.raises(ResolveError, match="did not resolve"):
        resolve(HANDLE, config=config(web, dns_stub, web_base=f"http://127.0.0.1:{free_port()}"))


def test_oversized_document_is_refused_by_its_cap(web, dns_stub):
    document = did_document(DID, key=KEY.public_key, pds=PDS, handle=HANDLE)
    document["padding"] = "x" * 5000
    web.plc[DID] = document
    with pytest.raises(ResolveError, match="max_doc_bytes"):
        resolve(DID, config=config(web, dns_stub, max_doc_bytes=4096))


@pytest.mark.parametrize("body", ["not json", "[1, 2]", "null", '"did"', "[" * 100_000, '{"a":' * 100_000])
def test_a_document_that_is_not_a_json_object_is_refused(web, dns_stub, body):
    web.plc[DID] = body
    with pytest.raises(ResolveError, match="DID document"):
        resolve(DID, config=config(web, dns_stub))


# -- the DID document -------------------------------------------------------------------------


def good_document() -> dict:
    return did_document(DID, key=KEY.public_key, pds=PDS, handle=HANDLE)


def broken(change) -> dict:
    document = good_document()
    change(document)
    return document


BAD_DOCUMENTS = {
    "id mismatch": (lambda d: d.update(id=OTHER_DID), "has id"),
    "no services": (lambda d: d.pop("service"), "no service list"),
    "no pds service": (lambda d: d.update(service=[{"id": "#other", "type": "X", "serviceEndpoint": PDS}]), "no PDS"),
    "wrong service type": (lambda d: d["service"][0].update(type="Relay"), "has type 'Relay'"),
    "pds not a string": (lambda d: d["service"][0].update(serviceEndpoint={"url": PDS}), "not a URL string"),
    "pds ftp": (lambda d: d["service"][0].update(serviceEndpoint="ftp://pds.test"), "not http or https"),
    "pds no host": (lambda d: d["service"][0].update(serviceEndpoint="https://"), "no plain host"),
    "pds userinfo": (lambda d: d["service"][0].update(serviceEndpoint="https://u:p@pds.test"), "no plain host"),
    "pds query": (lambda d: d["service"][0].update(serviceEndpoint="https://pds.test/?x=1"), "query"),
    "pds bad port": (lambda d: d["service"][0].update(serviceEndpoint="https://pds.test:99999"), "invalid URL"),
    "no methods": (lambda d: d.pop("verificationMethod"), "no verificationMethod"),
    "no atproto key": (lambda d: d["verificationMethod"][0].update(id="#other"), "no signing key"),
    "key not multibase": (lambda d: d["verificationMethod"][0].update(publicKeyMultibase="Q3sh"), "not a base58btc"),
    "key garbage": (lambda d: d["verificationMethod"][0].update(publicKeyMultibase="z111"), "bad public key"),
    "key wrong type": (lambda d: d["verificationMethod"][0].update(type="Ed25519VerificationKey2020"), "unsupported"),
    "key not a point": (
        lambda d: d["verificationMethod"][0].update(
            publicKeyMultibase="zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBmf"
        ),
        "bad public key",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_bad_did_documents_are_refused_with_the_reason(web, dns_stub, case):
    change, message = BAD_DOCUMENTS[case]
    web.plc[DID] = broken(change)
    with pytest.raises(ResolveError, match=message):
        resolve(DID, config=config(web, dns_stub))


def test_document_parser_accepts_full_and_relative_ids_and_trims_the_url():
    document = good_document()
    document["service"][0].update(id=f"{DID}#atproto_pds", serviceEndpoint=PDS + "/")
    document["verificationMethod"][0]["id"] = "#atproto"
    identity = identity_from_document(DID, document)
    assert identity.pds == PDS and identity.handle == HANDLE


def test_legacy_uncompressed_secp256k1_key_is_read():
    import coincurve
    from multiformats import multibase

    public = KEY.public_key
    # the old EcdsaSecp256k1VerificationKey2019 form: a bare uncompressed point
    uncompressed = coincurve.PublicKey(public.compressed).format(compressed=False)
    document = good_document()
    document["verificationMethod"][0].update(
        type="EcdsaSecp256k1VerificationKey2019", publicKeyMultibase=multibase.encode(uncompressed, "base58btc")
    )
    assert identity_from_document(DID, document).signing_key == public


def test_first_valid_at_handle_is_the_claimed_one():
    document = good_document()
    document["alsoKnownAs"] = ["https://example.com", "at://not valid", "at://Bob.Test", f"at://{HANDLE}"]
    assert identity_from_document(DID, document).handle == "bob.test"
    assert identity_from_document(DID, document, handle=HANDLE).handle == HANDLE


# -- configuration ---------------------------------------------------------------------------


def test_plc_url_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("PYPDS_PLC_URL", "http://127.0.0.1:9")
    assert ResolverConfig().plc_url == "http://127.0.0.1:9"
    monkeypatch.delenv("PYPDS_PLC_URL")
    assert ResolverConfig().plc_url == DEFAULT_PLC_URL


def test_dns_servers_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("PYPDS_DNS", " 127.0.0.1:5353  [::1]:53 ")
    assert ResolverConfig().nameservers == ("127.0.0.1:5353", "[::1]:53")
    monkeypatch.setenv("PYPDS_DNS", "dns.example.com")
    with pytest.raises(InvalidInput, match="not an IP address"):
        ResolverConfig()
    monkeypatch.delenv("PYPDS_DNS")
    assert ResolverConfig().nameservers == ()


def test_web_base_forms():
    assert ResolverConfig().web_url("a.test", "/x") == ("https://a.test/x", {})
    assert ResolverConfig(web_base="http://{host}:8080/").web_url("a.test", "/x") == ("http://a.test:8080/x", {})
    assert ResolverConfig(web_base="http://127.0.0.1:9/").web_url("a.test", "/x") == (
        "http://127.0.0.1:9/x",
        {"Host": "a.test"},
    )
    assert ResolverConfig(web_base=lambda host: f"http://{host}.local").web_url("a.test", "/x") == (
        "http://a.test.local/x",
        {},
    )


@pytest.mark.parametrize("server", ["not an address", "127.0.0.1:0", "127.0.0.1:http", "[::1]:x"])
def test_bad_dns_server_setting_is_refused_at_once(server):
    with pytest.raises(InvalidInput, match="invalid DNS server"):
        ResolverConfig(nameservers=(server,))


@pytest.mark.parametrize(
    "settings",
    [{"plc_url": "ftp://plc.test"}, {"web_base": "file:///tmp"}, {"timeout": 0}, {"max_doc_bytes": 0}],
)
def test_bad_settings_are_refused_at_once(settings):
    with pytest.raises(InvalidInput):
        ResolverConfig(**settings)


def test_a_document_dripped_a_byte_at_a_time_times_out():
    """Each read arrives within the timeout, but the whole answer must arrive within a few of them."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not stop.wait(0.1):
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    web_base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(ResolveError, match="timed out"):
            resolve("did:web:example.test", config=ResolverConfig(web_base=web_base, timeout=0.4))
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff", b"[]"])
def test_json_object_turns_any_bad_answer_into_the_given_error(body):
    from pypds import NetworkError
    from pypds.net.xrpc import json_object

    with pytest.raises(NetworkError, match="the answer"):
        json_object(body, NetworkError, "the answer")
    assert json_object(b'{"cid": "x"}', NetworkError, "the answer") == {"cid": "x"}


# -- the address policy (issue 12.6) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1"]
    + ["255.255.255.255", "240.0.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fec0::1", "ff02::1"]
    + ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::1", "2001:db8::1", "::7f00:1"],
)
def test_non_public_addresses_are_recognised(address):
    from pypds.net.xrpc import is_public_address

    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_recognised(address):
    from pypds.net.xrpc import is_public_address

    assert is_public_address(address)


class FakeDns:
    """An aiohttp resolver answering from a dict, as a hostile or re-bound DNS would."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(self, host, port=0, family=0):
        return [
            {"hostname": host, "host": ip, "port": port, "family": 0, "proto": 0, "flags": 0}
            for ip in self.answers[host]
        ]

    async def close(self):
        pass


def test_a_name_re_bound_to_a_private_address_is_refused_at_connect_time():
    import asyncio

    from pypds import AddressRefused
    from pypds.net.xrpc import AddressPolicy, PublicOnlyResolver

    dns = FakeDns({"pds.example.com": ["127.0.0.1", "::1"], "mixed.example.com": ["10.0.0.8", "8.8.8.8"]})
    resolver = PublicOnlyResolver(AddressPolicy(trusted=frozenset({("plc.internal", 8080)})), dns)
    with pytest.raises(AddressRefused, match=r"pds\.example\.com resolves only to non-public addresses \(127"):
        asyncio.run(resolver.resolve("pds.example.com", 443))
    assert [a["host"] for a in asyncio.run(resolver.resolve("mixed.example.com", 443))] == ["8.8.8.8"]
    dns.answers["plc.internal"] = ["10.0.0.9"]  # the user named it: their choice
    assert [a["host"] for a in asyncio.run(resolver.resolve("plc.internal", 8080))] == ["10.0.0.9"]
    with pytest.raises(AddressRefused):
        asyncio.run(resolver.resolve("plc.internal", 6379))  # the same host on another port is not what they named


def test_a_did_web_host_at_a_private_address_is_not_fetched(web, dns_stub):
    settings = {"web_base": None, "allow_private_network": False}
    with pytest.raises(ResolveError, match=r"127\.0\.0\.1 is not a public address.*--allow-private-network"):
        resolve("did:web:127.0.0.1%3A8443", config=config(web, dns_stub, **settings))
    assert web.requests == []


@pytest.mark.parametrize("allowed", [False, True])
def test_a_redirect_to_a_private_address_needs_the_opt_in(web, dns_stub, allowed):
    from aiohttp import web as aioweb

    from .netstubs import ServerThread

    did = "did:web:carol.test"
    document = did_document(did, key=KEY.public_key, pds=PDS)
    elsewhere = aioweb.Application()

    async def serve_document(_request):
        return aioweb.json_response(document)

    elsewhere.router.add_get("/doc.json", serve_document)
    with ServerThread(elsewhere) as other:

        async def redirect(_request):
            raise aioweb.HTTPFound(f"{other.url}/doc.json")

        web.did_web["carol.test"] = redirect
        settings = {"allow_private_network": allowed}
        if allowed:
            assert resolve(did, config=config(web, dns_stub, **settings)).pds == PDS
        else:  # the web base was the user's choice, the redirect target (another port) was not
            with pytest.raises(ResolveError, match=r"127\.0\.0\.1 is not a public address"):
                resolve(did, config=config(web, dns_stub, **settings))


def test_redirects_are_followed_at_most_five_times(web, dns_stub):
    from aiohttp import web as aioweb

    async def loop(_request):
        raise aioweb.HTTPFound("/.well-known/did.json")

    web.did_web["carol.test"] = loop
    with pytest.raises(ResolveError, match="more than 5 redirects"):
        resolve("did:web:carol.test", config=config(web, dns_stub))
    assert len(web.requests) == 6


def test_address_policy_trusts_exactly_the_hosts_the_user_named():
    from pypds.net.xrpc import AddressPolicy

    policy = ResolverConfig(plc_url="http://127.0.0.1:2582", web_base="http://{host}:8080").address_policy()
    assert policy == AddressPolicy(False, frozenset({("127.0.0.1", 2582)}))
    fixed = ResolverConfig(plc_url="https://plc.test", web_base="http://localhost:8080/").address_policy()
    assert fixed.trusted == frozenset({("plc.test", 443), ("localhost", 8080)})
    assert ResolverConfig(allow_private_network=True).address_policy().allow_private
