"""Identity resolution: from a handle or a DID to the account's PDS and signing key.

Terminology:

* A **handle** (``alice.example.com``) is a DNS name. It points at a DID
  through the DNS TXT record ``_atproto.<handle>`` (``did=<DID>``) or the
  HTTPS document ``https://<handle>/.well-known/atproto-did`` (the DID as
  text). Both are asked at once and the first valid answer wins; the other
  lookup is cancelled, so a DNS server that never answers does not delay a
  handle its ``.well-known`` resolves (and the other way round).
* A **DID** names the account for good. Its **DID document** comes from the
  PLC directory (``did:plc``: ``<plc_url>/<DID>``) or from the host itself
  (``did:web``: ``https://<host>/.well-known/did.json``).
* The document gives the **PDS** (the service ``#atproto_pds`` of type
  ``AtprotoPersonalDataServer``), the **signing key** (the verification
  method ``#atproto``, a multibase public key, secp256k1 or P-256) and the
  handle the account claims (the first ``at://`` entry of ``alsoKnownAs``).

Tricky bits:

* Bidirectional check. A handle is only the account's if the document
  claims it back. Resolving *from a handle* whose DID document does not
  list ``at://<handle>`` raises :class:`HandleMismatch`: the caller asked
  for that name and would otherwise get someone else's repository under it.
  Resolving *from a DID*, the claimed handle is resolved forward (unless
  ``verify_handle=False``) and reported only if it points back at the DID;
  otherwise :attr:`Identity.handle` is None and resolution still succeeds
  (the DID, not the handle, is what the data is checked against). This
  check, not agreement between DNS and HTTPS, is what makes a handle
  trustworthy: when the two disagree, the first valid answer is taken and
  its document must claim the handle.
* Everything fetched is untrusted: bodies are capped (``max_doc_bytes``),
  DIDs are checked for syntax, the document's ``id`` must be the DID asked
  for, the PDS URL must be plain ``http``/``https`` with a host, the key
  must parse. Failures raise :class:`ResolveError` naming the field and URL.
* Everything is configurable (:class:`ResolverConfig`) so tests and private
  deployments can point the PLC directory, DNS and the HTTPS lookups at any
  address, for example loopback stubs.
* Addresses learned from the network (did:web and handle hosts, redirects,
  the addresses host names resolve to) must be public unless
  ``allow_private_network`` is set: a hostile document must not turn a
  lookup into a request to the local network (:class:`~pypds.net.xrpc.AddressPolicy`).
  The ``plc_url`` and a fixed ``web_base`` are the user's choice and trusted.
  Redirects (at most 5) are followed here, each hop checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
from yarl import URL

from ..errors import (
    HandleMismatch,
    InvalidDid,
    InvalidHandle,
    InvalidInput,
    InvalidSigningKey,
    NetworkError,
    ResolveError,
    shown,
)
from ..keys import PublicKey, base58btc_decode, parse_did_key
from ..syntax import check_did, check_handle, is_valid_did, is_valid_handle
from .xrpc import AddressPolicy, failure_reason, json_object, new_session, read_capped, small_answer_timeout

__all__ = [
    "DEFAULT_PLC_URL",
    "Identity",
    "ResolverConfig",
    "identity_from_document",
    "resolve",
    "resolve_async",
]

#: The public PLC directory; ``PYPDS_PLC_URL`` overrides it.
DEFAULT_PLC_URL = "https://plc.directory"
#: Largest DID document or ``atproto-did`` answer read (1 MiB).
MAX_DOC_BYTES = 1 << 20

_PDS_SERVICE = ("#atproto_pds", "AtprotoPersonalDataServer")
_KEY_ID = "#atproto"
_MULTIKEY_TYPES = {"Multikey"}
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
_LEGACY_KEY_TYPES = {
    "EcdsaSecp256k1VerificationKey2019": "k256",
    "EcdsaSecp256r1VerificationKey2019": "p256",
}

WebBase = str | Callable[[str], str]


def _default_plc_url() -> str:
    return os.environ.get("PYPDS_PLC_URL") or DEFAULT_PLC_URL


def _default_nameservers() -> tuple[str, ...]:
    return tuple(os.environ.get("PYPDS_DNS", "").split())


@dataclass(frozen=True)
class ResolverConfig:
    """Where and how identities are looked up.

    * ``plc_url``: the PLC directory (default ``$PYPDS_PLC_URL`` or
      ``https://plc.directory``).
    * ``nameservers``: DNS servers as ``"ip"`` or ``"ip:port"``
      (``"[::1]:53"`` for IPv6); default ``$PYPDS_DNS`` (space-separated);
      empty uses the system resolver.
    * ``web_base``: how HTTPS lookups for a host (a handle's
      ``/.well-known/atproto-did``, a did:web's ``/.well-known/did.json``)
      are addressed. None means ``https://<host>``. A string is a base URL;
      ``{host}`` in it is replaced by the host, and without ``{host}`` every
      host is reached at that one address with the host in the ``Host``
      header (``"http://127.0.0.1:8080"``). A callable maps a host to its
      base URL.
    * ``timeout``: seconds for each DNS query and each HTTP connect or read.
    * ``max_doc_bytes``: cap on any fetched document.
    * ``dns`` / ``well_known``: turn either handle lookup off.
    * ``verify_handle``: when resolving a DID, check that the handle its
      document claims resolves back to it.
    * ``allow_private_network``: connect to non-public addresses (loopback,
      private, link-local...) learned from the network: a did:web or handle
      host, a redirect, a DID document's PDS. Off by default; the hosts of
      ``plc_url`` and of a fixed ``web_base`` are always allowed.
    """

    plc_url: str = field(default_factory=_default_plc_url)
    nameservers: tuple[str, ...] = field(default_factory=_default_nameservers)
    web_base: WebBase | None = None
    timeout: float = 10.0
    max_doc_bytes: int = MAX_DOC_BYTES
    dns: bool = True
    well_known: bool = True
    verify_handle: bool = True
    allow_private_network: bool = False

    def __post_init__(self) -> None:
        """Refuse unusable settings at once, with :class:`InvalidInput` naming the field."""
        if not isinstance(self.plc_url, str) or urlsplit(self.plc_url).scheme not in ("http", "https"):
            raise InvalidInput(f"plc_url must be an http(s) URL: {shown(self.plc_url)}")
        if isinstance(self.web_base, str) and urlsplit(self.web_base).scheme not in ("http", "https"):
            raise InvalidInput(f"web_base must be an http(s) URL: {shown(self.web_base)}")
        if not self.timeout > 0:
            raise InvalidInput(f"timeout must be positive: {shown(self.timeout)}")
        if not self.max_doc_bytes > 0:
            raise InvalidInput(f"max_doc_bytes must be positive: {shown(self.max_doc_bytes)}")
        for spec in self.nameservers:
            _nameserver(spec)

    def web_url(self, host: str, path: str) -> tuple[str, dict[str, str]]:
        """The URL (and extra headers) for ``path`` on ``host`` under this config."""
        base = self.web_base
        if base is None:
            return f"https://{host}{path}", {}
        if callable(base):
            return base(host).rstrip("/") + path, {}
        if "{host}" in base:
            return base.replace("{host}", host).rstrip("/") + path, {}
        return base.rstrip("/") + path, {"Host": host}

    def address_policy(self) -> AddressPolicy:
        """Where connections may go: public addresses, the user-given ``plc_url`` and fixed
        ``web_base``, and anything with ``allow_private_network``."""
        chosen = [self.plc_url]
        if isinstance(self.web_base, str) and "{host}" not in self.web_base:
            chosen.append(self.web_base)
        return AddressPolicy.trusting(chosen, allow_private=self.allow_private_network)


@dataclass(frozen=True)
class Identity:
    """A resolved account: its DID, verified handle (or None), PDS URL, signing key and DID document."""

    did: str
    handle: str | None
    pds: str
    signing_key: PublicKey
    document: dict[str, Any]

    @property
    def did_key(self) -> str:
        """The signing key as ``did:key:z...``."""
        return self.signing_key.did_key

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (without the document)."""
        return {"did": self.did, "handle": self.handle, "pds": self.pds, "signingKey": self.did_key}


def resolve(identifier: str, *, config: ResolverConfig | None = None) -> Identity:
    """Resolve a handle (``alice.example.com``, ``@alice.example.com``) or a DID to an :class:`Identity`.

    Raises :class:`InvalidHandle` / :class:`InvalidDid` for malformed input,
    :class:`HandleMismatch` when the DID document does not claim the handle,
    and :class:`ResolveError` for anything else (not found, unreachable,
    malformed or oversized documents, no PDS or key). Runs its own event
    loop: inside one, use :func:`resolve_async`.
    """
    return asyncio.run(resolve_async(identifier, config=config))


async def resolve_async(
    identifier: str,
    *,
    config: ResolverConfig | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Identity:
    """:func:`resolve` as a coroutine; reuses ``session`` when given."""
    config = config or ResolverConfig()
    if session is not None:
        return await _Resolver(config, session).identity(identifier)
    async with new_session(config.timeout, policy=config.address_policy()) as own:
        return await _Resolver(config, own).identity(identifier)


def identity_from_document(did: str, document: object, *, handle: str | None = None) -> Identity:
    """Check a DID document for ``did`` and take its PDS endpoint and signing key.

    ``handle`` is reported as the identity's handle if the document claims
    it; without it, the document's first ``at://`` handle is reported
    unverified. Raises :class:`ResolveError` naming what is wrong.
    """
    if not isinstance(document, dict):
        raise ResolveError(f"DID document for {did} is {shown(document)}, not a JSON object")
    if document.get("id") != did:
        raise ResolveError(f"DID document for {did} has id {shown(document.get('id'))}")
    claimed = claimed_handles(document)
    if handle is None:
        handle = claimed[0] if claimed else None
    elif handle not in claimed:
        handle = None
    return Identity(did, handle, _pds_endpoint(did, document), _signing_key(did, document), document)


def claimed_handles(document: dict[str, Any]) -> list[str]:
    """The valid handles a DID document lists as ``at://<handle>`` in ``alsoKnownAs``, in order."""
    aka = document.get("alsoKnownAs")
    if not isinstance(aka, list):
        return []
    found = []
    for entry in aka:
        if isinstance(entry, str) and entry.startswith("at://") and is_valid_handle(entry[5:]):
            found.append(entry[5:].lower())
    return found


def _entry_id_matches(did: str, entry_id: object, fragment: str) -> bool:
    return entry_id in (fragment, did + fragment)


def _pds_endpoint(did: str, document: dict[str, Any]) -> str:
    services = document.get("service")
    if not isinstance(services, list):
        raise ResolveError(f"DID document for {did} has no service list")
    fragment, kind = _PDS_SERVICE
    for entry in services:
        if isinstance(entry, dict) and _entry_id_matches(did, entry.get("id"), fragment):
            if entry.get("type") != kind:
                raise ResolveError(f"DID document for {did}: service {fragment} has type {shown(entry.get('type'))}")
            return check_service_url(entry.get("serviceEndpoint"), f"service {fragment} of {did}")
    raise ResolveError(f"DID document for {did} has no {fragment} service (no PDS)")


def check_service_url(value: object, what: str) -> str:
    """``value`` as a clean ``http(s)://host[:port][/path]`` URL without a trailing slash."""
    if not isinstance(value, str) or len(value) > 2048:
        raise ResolveError(f"{what}: endpoint {shown(value)} is not a URL string")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError as exc:
        raise ResolveError(f"{what}: invalid URL {shown(value)}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ResolveError(f"{what}: URL {shown(value)} is not http or https")
    if not host or parts.username is not None or parts.password is not None:
        raise ResolveError(f"{what}: URL {shown(value)} has no plain host")
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        raise ResolveError(f"{what}: URL {shown(value)} has a query, fragment or whitespace")
    return value.rstrip("/")


def _signing_key(did: str, document: dict[str, Any]) -> PublicKey:
    methods = document.get("verificationMethod")
    if not isinstance(methods, list):
        raise ResolveError(f"DID document for {did} has no verificationMethod list")
    for entry in methods:
        if isinstance(entry, dict) and _entry_id_matches(did, entry.get("id"), _KEY_ID):
            return _parse_method_key(did, entry)
    raise ResolveError(f"DID document for {did} has no {_KEY_ID} verification method (no signing key)")


def _parse_method_key(did: str, entry: dict[str, Any]) -> PublicKey:
    where = f"verification method {_KEY_ID} of {did}"
    value, kind = entry.get("publicKeyMultibase"), entry.get("type")
    if not isinstance(value, str) or not value.startswith("z") or len(value) > 256:
        raise ResolveError(f"{where}: publicKeyMultibase {shown(value)} is not a base58btc multibase string")
    try:
        if kind in _LEGACY_KEY_TYPES:
            return _legacy_key(_LEGACY_KEY_TYPES[kind], base58btc_decode(value[1:], "publicKeyMultibase"))
        if kind in _MULTIKEY_TYPES:
            return parse_did_key("did:key:" + value)
    except InvalidSigningKey as exc:
        raise ResolveError(f"{where}: bad public key {shown(value)}: {exc}") from None
    raise ResolveError(f"{where}: unsupported key type {shown(kind)}")


def _legacy_key(curve: str, raw: bytes) -> PublicKey:
    """A key of the old ``EcdsaSecp256*VerificationKey2019`` types: a bare point, maybe uncompressed."""
    if len(raw) == 65 and raw[0] == 4:
        x, y = raw[1:33], raw[33:]
        raw = bytes([2 + (y[-1] & 1)]) + x
    return PublicKey(curve, raw)


class _Resolver:
    """One resolution's worth of lookups over a shared HTTP session."""

    def __init__(self, config: ResolverConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.policy = config.address_policy()

    async def identity(self, identifier: str) -> Identity:
        if not isinstance(identifier, str) or not identifier:
            raise InvalidHandle(f"expected a handle or a DID, got {shown(identifier)}")
        if identifier.startswith("did:"):
            return await self.from_did(check_did(identifier))
        handle = check_handle(identifier.removeprefix("@").removeprefix("at://"))
        return await self.from_handle(handle)

    async def from_handle(self, handle: str) -> Identity:
        did = await self.handle_to_did(handle)
        document = await self.document(did)
        identity = identity_from_document(did, document, handle=handle)
        if identity.handle is None:
            raise HandleMismatch(
                f"handle {handle} points to {did}, but its DID document does not claim at://{handle} "
                f"(alsoKnownAs: {', '.join(claimed_handles(document)) or 'no handles'})"
            )
        return identity

    async def from_did(self, did: str) -> Identity:
        document = await self.document(did)
        identity = identity_from_document(did, document)
        if identity.handle is not None and self.config.verify_handle and not await self._points_to(identity, did):
            identity = Identity(did, None, identity.pds, identity.signing_key, identity.document)
        return identity

    async def _points_to(self, identity: Identity, did: str) -> bool:
        try:
            return await self.handle_to_did(identity.handle or "") == did
        except (NetworkError, InvalidHandle, InvalidDid):
            return False

    # -- handle -> DID -------------------------------------------------------------

    async def handle_to_did(self, handle: str) -> str:
        """The DID a handle points to: DNS and HTTPS are asked at once and the first valid answer
        wins (the other lookup is cancelled). The caller's check that the DID document claims the
        handle is what makes the answer trustworthy, so neither source has to wait for the other."""
        lookups: dict[str, Coroutine[Any, Any, str | None]] = {}
        if self.config.dns:
            lookups["DNS TXT _atproto." + handle] = self.dns_did(handle)
        if self.config.well_known:
            lookups[self._well_known_url(handle)] = self.well_known_did(handle)
        if not lookups:
            raise ResolveError(f"cannot resolve handle {handle}: both DNS and HTTPS lookups are turned off")
        names = {asyncio.ensure_future(lookup): name for name, lookup in lookups.items()}
        failures: dict[str, str] = {}
        try:
            pending = set(names)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=list(names).index):  # answers at the same moment: DNS first
                    did = _lookup_answer(task, names[task], failures)
                    if did is not None:
                        return did
        finally:
            await _cancel(names)
        reasons = "; ".join(failures[name] for name in lookups if name in failures)
        raise ResolveError(f"handle {handle} did not resolve: {reasons}")

    def _well_known_url(self, handle: str) -> str:
        return self.config.web_url(handle, "/.well-known/atproto-did")[0]

    async def dns_did(self, handle: str) -> str | None:
        """The DID in ``_atproto.<handle>``'s TXT records, None if there is none."""
        name = f"_atproto.{handle}"
        resolver = self._dns_resolver()
        try:
            answer = await resolver.resolve(name, "TXT", lifetime=self.config.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout:
            raise ResolveError(f"DNS lookup of {name} timed out after {self.config.timeout} s") from None
        except dns.exception.DNSException as exc:
            raise ResolveError(f"DNS lookup of {name} failed: {exc}") from None
        dids = set()
        for record in answer:
            text = b"".join(record.strings).decode("utf-8", "replace")
            if text.startswith("did="):
                dids.add(text[4:].strip())
        if len(dids) > 1:
            raise ResolveError(f"DNS {name} has several did= TXT records: {', '.join(sorted(dids))}")
        if not dids:
            return None
        did = dids.pop()
        if not is_valid_did(did):
            raise ResolveError(f"DNS {name} holds an invalid DID {shown(did)}")
        return did

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        if not self.config.nameservers:
            try:
                return dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                raise ResolveError(f"no usable system DNS configuration: {exc}") from None
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [_nameserver(spec) for spec in self.config.nameservers]
        return resolver

    async def well_known_did(self, handle: str) -> str | None:
        """The DID served at ``https://<handle>/.well-known/atproto-did``, None for a 404."""
        status, body, url = await self._get(handle, "/.well-known/atproto-did")
        if status == 404:
            return None
        if status != 200:
            raise ResolveError(f"{url} answered HTTP {status}")
        text = body.decode("utf-8", "replace").strip()
        if not is_valid_did(text):
            raise ResolveError(f"{url} holds an invalid DID {shown(text)}")
        return text

    # -- DID -> document -------------------------------------------------------------

    async def document(self, did: str) -> dict[str, Any]:
        """Fetch and parse the DID document of a did:plc or did:web."""
        if did.startswith("did:plc:"):
            url = f"{self.config.plc_url.rstrip('/')}/{did}"
            status, body, url = await self._fetch(url, {})
        elif did.startswith("did:web:"):
            status, body, url = await self._get(_web_host(did), "/.well-known/did.json")
        else:
            raise ResolveError(f"cannot resolve {did}: only did:plc and did:web are supported")
        if status in (404, 410):
            gone = "not found" if status == 404 else "deactivated (HTTP 410)"
            raise ResolveError(f"DID {did} {gone} at {url}")
        if status != 200:
            raise ResolveError(f"fetching the DID document of {did} from {url} answered HTTP {status}")
        return json_object(body, ResolveError, f"DID document of {did} from {url}")

    async def _get(self, host: str, path: str) -> tuple[int, bytes, str]:
        url, headers = self.config.web_url(host, path)
        return await self._fetch(url, headers)

    async def _fetch(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        """GET ``url``, following at most 5 redirects (each checked against the address policy):
        (status, body capped at max_doc_bytes, url). Transport failures are ResolveError."""
        first = url
        try:
            for _hop in range(_MAX_REDIRECTS + 1):
                status, body, location = await self._get_once(url, headers)
                if location is None:
                    return status, body, url
                if _origin(location) != _origin(url):  # a fixed web base's Host header stays on its origin only
                    headers = {}
                url = location
            raise ResolveError(f"fetching {first}: more than {_MAX_REDIRECTS} redirects")
        except ResolveError:
            raise
        except NetworkError as exc:
            raise ResolveError(f"fetching {url}: {exc}") from exc
        except TimeoutError:
            raise ResolveError(f"fetching {url} timed out after {self.config.timeout} s") from None
        except aiohttp.ClientError as exc:
            raise ResolveError(f"fetching {url} failed: {failure_reason(exc)}") from None

    async def _get_once(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, str | None]:
        """One GET: (status, body if 200, the redirect target if it is a redirect)."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ResolveError(f"cannot fetch {shown(url)}: only http and https URLs are used")
        self.policy.check_url(url, "lookup URL")
        timeout = small_answer_timeout(self.session)
        async with self.session.get(url, headers=headers, allow_redirects=False, timeout=timeout) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                return response.status, b"", _redirect_target(response, location)
            if response.status != 200:
                return response.status, b"", None
            return 200, await read_capped(response, self.config.max_doc_bytes, "max_doc_bytes"), None


def _lookup_answer(task: asyncio.Future[str | None], name: str, failures: dict[str, str]) -> str | None:
    """The DID a finished handle lookup found, or None after noting why it found none in ``failures``.
    Anything but a :class:`ResolveError` is a bug or a cancellation and propagates."""
    try:
        did = task.result()
    except ResolveError as exc:
        failures[name] = f"{name}: {exc}"
        return None
    if did is None:
        failures[name] = f"{name}: no DID"
    return did


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the lookups still running and wait until they have stopped."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parsed = URL(url)
    return parsed.scheme, parsed.raw_host, parsed.port


def _redirect_target(response: aiohttp.ClientResponse, location: str) -> str:
    try:
        return str(response.url.join(URL(location)))
    except ValueError:
        raise ResolveError(f"{response.url} redirects to an invalid URL {shown(location)}") from None


def _web_host(did: str) -> str:
    """The host a did:web names: ``did:web:example.com`` or ``did:web:localhost%3A8080``."""
    ident = did[len("did:web:") :]
    if ":" in ident:
        raise ResolveError(f"{did}: did:web with a path is not supported by atproto")
    host = unquote(ident)
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", host) or not name:
        raise ResolveError(f"{did}: {shown(host)} is not a host name")
    return host.lower()


def _nameserver(spec: str) -> dns.nameserver.Do53Nameserver:
    """A DNS server from ``ip``, ``ip:port`` or ``[v6]:port`` (addresses only, not names)."""
    if not isinstance(spec, str):
        raise InvalidInput(f"invalid DNS server {shown(spec)}: expected a string")
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest:
            port = _port(spec, rest.removeprefix(":"))
    elif spec.count(":") == 1:
        host, text = spec.split(":")
        port = _port(spec, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidInput(f"invalid DNS server {shown(spec)}: not an IP address") from None
    return dns.nameserver.Do53Nameserver(host, port)


def _port(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise InvalidInput(f"invalid DNS server {shown(spec)}: bad port")
    return int(text)
