"""Inter-service authentication: a short-lived JWT signed with an account's atproto signing key.

A PDS accepts such a token where the account proves it holds the key its DID
document names, for example ``com.atproto.server.createAccount`` for an
existing DID (the first step of moving an account to a new PDS). The token is
a compact JWS (``header.payload.signature``, each base64url without padding):

* header ``{"typ": "JWT", "alg": "ES256K"}`` (secp256k1) or ``"ES256"`` (P-256);
* payload ``iat``, ``iss`` (the account's DID), ``aud`` (the DID of the
  service that will check it), ``exp`` (seconds since the epoch; keep it
  short), ``lxm`` (the one XRPC method it allows) and ``jti`` (a nonce);
* signature: ECDSA over sha256 of the ASCII ``header.payload``, as 64 raw
  bytes ``r || s`` with low S (the atproto rule; not DER).

The receiver resolves ``iss`` to its DID document and checks the signature
with the ``#atproto`` key, then ``aud``, ``lxm`` and ``exp``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time

from ..errors import InvalidInput, shown
from ..keys import SigningKey
from ..syntax import check_did, is_valid_nsid

__all__ = ["JWT_ALGORITHMS", "service_auth_token"]

#: JWT ``alg`` per curve.
JWT_ALGORITHMS = {"k256": "ES256K", "p256": "ES256"}
#: Default lifetime of a token, in seconds (the reference implementation uses 60).
DEFAULT_LIFETIME = 60


def service_auth_token(
    key: SigningKey,
    *,
    iss: str,
    aud: str,
    lxm: str,
    lifetime: int = DEFAULT_LIFETIME,
    now: int | None = None,
) -> str:
    """A service-auth JWT from ``iss`` for ``aud``, valid for ``lxm`` during ``lifetime`` seconds.

    ``key`` must be the signing key ``iss``'s DID document names, or the
    receiver refuses the token. ``now`` (seconds since the epoch) is for tests.
    """
    check_did(iss)
    check_did(aud)
    if not is_valid_nsid(lxm):
        raise InvalidInput(f"lxm must be an XRPC method name (NSID): {shown(lxm)}")
    if not isinstance(lifetime, int) or lifetime <= 0:
        raise InvalidInput(f"lifetime must be a positive number of seconds: {shown(lifetime)}")
    issued = int(time.time()) if now is None else now
    header = {"typ": "JWT", "alg": JWT_ALGORITHMS[key.curve]}
    payload = {
        "iat": issued,
        "iss": iss,
        "aud": aud,
        "exp": issued + lifetime,
        "lxm": lxm,
        "jti": secrets.token_hex(16),
    }
    signing_input = f"{_b64url(_compact(header))}.{_b64url(_compact(payload))}"
    return f"{signing_input}.{_b64url(key.sign(signing_input.encode('ascii')))}"


def _compact(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
