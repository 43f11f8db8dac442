"""Back up an atproto account: download it with its blobs, keep it current, verify it.

    python examples/backup.py alice.bsky.social ./backups/alice               # one pass
    python examples/backup.py alice.bsky.social ./backups/alice --every 3600  # keep it current

The first pass downloads the whole repository and every blob; later passes
fetch only the commits and blobs that are new since the copy's rev. Each
pass ends with a full check of the copy against the signing key in the
account's DID document: every block re-hashed, the whole tree, the commit
signature, every blob file. A pass that fails leaves the copy exactly as it
was: run it again.

On one machine, without the internet: serve a repository as its own
identity and point the lookups at it (the README's "Trying it locally"):

    pypds serve ./alice --identity --handle alice.test=./alice --port 2583
    python examples/backup.py alice.test ./backup --plc-url http://127.0.0.1:2583 \\
        --web-base http://127.0.0.1:2583 --allow-private-network
"""

from __future__ import annotations

import argparse
import time

import pypds


def back_up(account: str, path: str, config: pypds.ResolverConfig) -> bool:
    """One pass: bring the copy at ``path`` up to date, then check all of it. True if all is well."""
    # since=True: a diff CAR when a copy exists (a missing copy is downloaded whole);
    # blobs=True: every blob not stored yet, each checked against its CID.
    report = pypds.download(account, path, blobs=True, since=True, config=config)
    who = report.identity.handle or report.identity.did
    print(f"{report.action}: {who} at rev {report.rev}, {len(report.blobs_fetched)} new blobs")
    for failure in report.blobs_failed:  # fetched again by the next pass
        print(f"  blob {failure.cid.encode()} failed: {failure.error}")

    with pypds.Repo.open(path) as copy:
        # The key comes from the DID document, not from the copy: a copy holds no key.
        check = copy.verify(key=report.identity.did_key)
        missing = copy.missing_blobs()  # referenced by records, not stored (the PDS did not list them)
    print(f"verify: {'OK' if check.ok else 'FAILED'}; {len(missing)} referenced blobs not stored")
    if not check.ok:
        print(check)
    return check.ok and report.ok


def main() -> int:
    parser = argparse.ArgumentParser(description="Download an account with its blobs, keep it current, verify it.")
    parser.add_argument("account", help="handle or DID")
    parser.add_argument("path", help="the backup's repository directory")
    parser.add_argument("--every", type=float, metavar="SECONDS", help="repeat every SECONDS (default: once)")
    parser.add_argument("--plc-url", default=None, help="PLC directory (default: https://plc.directory)")
    parser.add_argument("--web-base", default=None, help="base URL for handle and did:web lookups")
    parser.add_argument("--allow-private-network", action="store_true", help="allow loopback and private addresses")
    args = parser.parse_args()

    settings = {"web_base": args.web_base, "allow_private_network": args.allow_private_network}
    if args.plc_url:
        settings["plc_url"] = args.plc_url
    config = pypds.ResolverConfig(**settings)

    while True:
        try:
            ok = back_up(args.account, args.path, config)
        except pypds.PypdsError as exc:  # unreachable, tampered, older than the copy...: nothing changed
            print(f"backup failed, the copy is as it was: {type(exc).__name__}: {exc}")
            ok = False
        if args.every is None:
            return 0 if ok else 1
        time.sleep(args.every)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # Ctrl-C between passes (a pass cut short changes nothing)
        raise SystemExit(130) from None
