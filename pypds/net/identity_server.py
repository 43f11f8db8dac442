"""The identity side of the repositories a server holds, so a download can be tried on one machine.

``pypds serve ./alice --identity --handle alice.test=./alice`` (or :func:`~pypds.server.make_app`
with ``identity=IdentityOptions(...)``) answers, beside the sync API:

================================  ===============================================================
``GET /<did>``                    the DID document of a served ``did:plc``, as the PLC directory
                                  answers it (point ``--plc-url`` / ``plc_url`` here)
``GET /.well-known/did.json``     the document of the served ``did:web`` whose host is the
                                  request's ``Host``
``GET /.well-known/atproto-did``  the DID of the handle named by the request's ``Host`` (point
                                  ``--web-base`` / ``web_base`` here: it sends the handle as ``Host``)
================================  ===============================================================

Documents are built from each repository, not stored: ``#atproto`` is the repository's signing
key (``Multikey``, its ``did:key``), ``#atproto_pds`` the server's public URL, ``alsoKnownAs``
``at://<handle>`` for each handle given for it.

Tricky bits:

* Only a repository that holds its signing key can have a document: the document names the key
  its commits are checked against, and a copy imported from a CAR (or downloaded) holds only
  signatures, not the public key of whoever made them. Such a repository, or one whose HEAD
  its key did not sign, is refused when the application is made (:class:`InvalidInput` naming
  it), not served with a document that downloads would then reject.
* The public URL is every document's PDS endpoint. By default it is the URL the server listens
  on, known only once it listens (port 0 picks one), so :func:`~pypds.server.start_server` fills
  it in; a wildcard address (``0.0.0.0``, ``::``) is not a URL clients can use, and needs an
  explicit ``public_url``. Run by aiohttp's own runner, give ``public_url``.
* This is no PLC directory: no operation log, no updates, no signatures over the documents. It
  is for local trials and tests; a real account's identity is published by its PLC operations
  or its ``did:web`` host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from ..errors import InvalidInput, shown
from ..repo.repo import Repo
from ..syntax import check_handle

__all__ = ["IDENTITY", "IdentityOptions", "IdentityService", "did_document", "mount_identity"]

log = logging.getLogger("pypds.identity_server")

#: Host values that listen on every interface: not an address clients can be sent to.
WILDCARD_HOSTS = frozenset({None, "", "0.0.0.0", "::"})
_CONTEXT = [
    "https://www.w3.org/ns/did/v1",
    "https://w3id.org/security/multikey/v1",
    "https://w3id.org/security/suites/secp256k1-2019/v1",
]


@dataclass(frozen=True)
class IdentityOptions:
    """What the identity endpoints publish.

    * ``handles``: handle -> the served repository it names, as its DID or its directory
      (``{"alice.test": "./alice"}``). Each becomes ``at://<handle>`` in that repository's
      document and is answered at ``/.well-known/atproto-did`` for ``Host: <handle>``.
    * ``public_url``: the server's URL as clients reach it, the ``#atproto_pds`` endpoint of
      every document; None: the URL :func:`~pypds.server.start_server` listens on.
    """

    handles: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    public_url: str | None = None


def did_document(did: str, did_key: str, pds_url: str, handles: list[str]) -> dict[str, Any]:
    """An atproto DID document: ``#atproto`` (``did_key`` as a Multikey), ``#atproto_pds`` at
    ``pds_url`` and ``at://<handle>`` for each of ``handles``."""
    return {
        "@context": _CONTEXT,
        "id": did,
        "alsoKnownAs": [f"at://{handle}" for handle in handles],
        "verificationMethod": [
            {
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": did_key.removeprefix("did:key:"),
            }
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}],
    }


class IdentityService:
    """DID documents and handles for a set of served repositories (what :func:`mount_identity` mounts)."""

    def __init__(self, repos: Mapping[str, Repo], options: IdentityOptions) -> None:
        for repo in repos.values():
            _check_publishable(repo)
        self.repos = dict(repos)
        self.handles = _handle_table(options.handles, self.repos)
        self.public_url = None if options.public_url is None else check_public_url(options.public_url)
        self._web_hosts = {_web_host(did): did for did in self.repos if did.startswith("did:web:")}

    def listening_at(self, url: str) -> None:
        """Take ``url`` as the public URL unless one was given."""
        if self.public_url is None:
            self.public_url = check_public_url(url)

    def document(self, did: str, public_url: str) -> dict[str, Any]:
        """The DID document of a served repository, with ``public_url`` as its PDS."""
        repo = self.repos[did]
        handles = sorted(handle for handle, owner in self.handles.items() if owner == did)
        return did_document(did, repo.did_key or "", public_url, handles)

    async def plc_document(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        if did not in self.repos:
            return _not_found(f"DID not registered here: {shown(did)}")
        return self._document_response(did)

    async def web_document(self, request: web.Request) -> web.Response:
        did = self._web_hosts.get(request.host.lower())
        if did is None:
            return _not_found(f"no did:web served here for host {shown(request.host)}")
        return self._document_response(did)

    def _document_response(self, did: str) -> web.Response:
        if self.public_url is None:  # run by aiohttp's own runner, which does not tell where it listens
            message = "this server's public URL is not known: give IdentityOptions(public_url=...)"
            log.error("DID document of %s: %s", did, message)
            return web.json_response({"error": "InternalServerError", "message": message}, status=500)
        return web.json_response(self.document(did, self.public_url))

    async def handle_did(self, request: web.Request) -> web.Response:
        did = self.handles.get(_host_name(request.host))
        if did is None:
            return _not_found(f"no handle served here for host {shown(request.host)}")
        return web.Response(text=did)


IDENTITY = web.AppKey("pypds_identity_service", IdentityService)


def mount_identity(app: web.Application, repos: Mapping[str, Repo], options: IdentityOptions) -> IdentityService:
    """Add the identity endpoints to ``app`` (before any catch-all route) and return their service."""
    service = IdentityService(repos, options)
    app[IDENTITY] = service
    app.router.add_get("/.well-known/atproto-did", service.handle_did)
    app.router.add_get("/.well-known/did.json", service.web_document)
    app.router.add_get("/{did:did:plc:[^/]+}", service.plc_document)
    return service


def check_public_url(url: object) -> str:
    """``url`` as a plain ``http(s)://host[:port][/path]`` without a trailing slash, or :class:`InvalidInput`."""
    bad = InvalidInput(f"public URL must be an http(s) URL with a host, and no user, query or fragment: {shown(url)}")
    if not isinstance(url, str) or any(c.isspace() for c in url):
        raise bad
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not host or parts.username is not None or parts.query or parts.fragment:
        raise bad
    if host in WILDCARD_HOSTS:
        raise InvalidInput(f"{url} is a wildcard address, not one clients can reach: give the public URL")
    return url.rstrip("/")


def _check_publishable(repo: Repo) -> None:
    """Refuse a repository no truthful DID document can be built for."""
    where = f"{repo.path} ({repo.did})"
    if repo.did_key is None:
        raise InvalidInput(
            f"{where} holds no signing key, so no DID document can name the key its commits are checked "
            "against (a copy imported from a CAR or downloaded has none): serve it without --identity"
        )
    if not repo.signing_key_matches_head():
        raise InvalidInput(
            f"{where}: its HEAD commit is not signed by its key {repo.did_key}, so a DID document naming "
            "that key would not verify it: serve it without --identity, or write a commit with that key first"
        )
    if not repo.did.startswith(("did:plc:", "did:web:")):
        raise InvalidInput(f"{where}: only did:plc and did:web identities can be served")
    if repo.did.startswith("did:web:") and ":" in repo.did[len("did:web:") :]:
        raise InvalidInput(f"{where}: a did:web with a path is not used by atproto")


def _handle_table(handles: Mapping[str, str | os.PathLike[str]], repos: Mapping[str, Repo]) -> dict[str, str]:
    """handle -> DID, each handle checked and each target a served repository (by DID or directory)."""
    by_path = {repo.path.resolve(): did for did, repo in repos.items()}
    table: dict[str, str] = {}
    for name, target in handles.items():
        handle = check_handle(name)
        if handle in table:
            raise InvalidInput(f"handle {handle} is given twice")
        if isinstance(target, str) and target.startswith("did:"):
            did = target if target in repos else None
        else:
            did = by_path.get(Path(target).resolve())
        if did is None:
            raise InvalidInput(f"handle {handle} names {shown(os.fspath(target))}, which is not a served repository")
        table[handle] = did
    return table


def _web_host(did: str) -> str:
    """The host (and port) a did:web names, as a ``Host`` header carries it."""
    return unquote(did[len("did:web:") :]).lower()


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without a port and a trailing dot, in lower case."""
    name = host.lower()
    if ":" in name and not name.startswith("["):
        name = name.rsplit(":", 1)[0]
    return name.rstrip(".")


def _not_found(message: str) -> web.Response:
    return web.json_response({"error": "NotFound", "message": message}, status=404)
