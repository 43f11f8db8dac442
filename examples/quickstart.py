"""pypds quickstart: create a repo, write and read records, store a blob,
export a CAR, import it into a second repo and check both agree.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pypds import Repo
from pypds.tid import TidClock

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
POST = "app.bsky.feed.post"


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pypds-quickstart-"))
    with Repo.create(workdir / "alice", DID) as repo:
        print(f"created repo for {repo.did}, signing key {repo.did_key}")

        # one signed commit per write
        repo.put(
            POST,
            "3jui7kd54zh2y",
            {"$type": POST, "text": "hello atproto", "createdAt": "2024-01-01T00:00:00Z"},
        )

        # many writes, one commit
        clock = TidClock()
        with repo.batch() as batch:
            for i in range(100):
                rkey = clock.next()  # TIDs make good, time-ordered record keys
                batch.put(POST, rkey, {"$type": POST, "text": f"post {i}", "createdAt": "2024-01-01T00:00:00Z"})
        print(f"records in {POST}: {len(repo.list(POST))}; first: {repo.list(POST, limit=1)[0][0]}")
        print("read back:", repo.find(POST, "3jui7kd54zh2y"))

        blob = repo.put_blob(b"\x89PNG\r\n\x1a\n...pretend image...", "image/png")
        repo.put(
            POST,
            "3jui7kd6aaaaa",
            {
                "$type": POST,
                "text": "with image",
                "createdAt": "2024-01-01T00:00:00Z",
                "embed": {
                    "$type": "app.bsky.embed.images",
                    "images": [{"alt": "", "image": blob.to_record()}],
                },
            },
        )
        print("blob ref:", blob.to_json())

        car_path = workdir / "alice.car"
        repo.export_car(car_path)
        print(f"exported {car_path} ({car_path.stat().st_size} bytes), head {repo.head.encode()}")

        with Repo.from_car(workdir / "copy", car_path, key=repo.did_key) as copy:
            same_head = copy.head == repo.head
            same_root = copy.checkout().root == repo.checkout().root
            print(f"imported copy: head {copy.head.encode()}")
            print(f"heads agree: {same_head}; MST roots agree: {same_root} ({repo.checkout().root.encode()})")
            if not (same_head and same_root and copy.export_car() == repo.export_car()):
                raise SystemExit("copy differs from the original")
    print(f"done; files are in {workdir}")


if __name__ == "__main__":
    main()
