"""Time how ``pypds serve`` drops stalling clients and how fast it stops with streams open.

    python -m benchmarks.serve_timing [--runs 5] [--header-timeout 2]

Each run starts ``pypds serve`` in a subprocess on a repository with 2,000
posts and a 16 MiB blob, then measures:

* **header cut**: a client sends a request line and one header, never the
  blank line; seconds until the server closes the connection (expected:
  ``--header-timeout``);
* **SIGTERM to exit**: with three blob downloads and one CAR download that
  stopped reading, a client stalled in its headers and an idle connection
  open, seconds from SIGTERM until the process has exited (documented
  bound: 2 s).

Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pypds import Repo

DID = "did:plc:benchmarkbenchmarkbench"
POST = "app.bsky.feed.post"
HEAD = b"GET /xrpc/com.atproto.sync.listRepos HTTP/1.1\r\nHost: pypds\r\n"


def build(path: Path) -> str:
    """The repository every run serves; returns its blob's CID."""
    with Repo.create(path, DID) as repo:
        ref = repo.put_blob(bytes(range(256)) * (64 << 10), "video/mp4")
        with repo.batch() as batch:
            for i in range(2000):
                batch.put(POST, f"p{i:05d}", {"$type": POST, "text": f"post {i}", "createdAt": "2024-01-01T00:00:00Z"})
            batch.put(POST, "video", {"$type": POST, "text": "", "embed": {"video": ref.to_record()}})
    return ref.cid.encode()


def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def seconds_until_closed(sock: socket.socket, started: float) -> float:
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def one_run(path: Path, cid: str, header_timeout: float) -> tuple[float, float]:
    command = [sys.executable, "-m", "pypds.cli", "serve", str(path), "--port", "0"]
    process = subprocess.Popen([*command, "--header-timeout", str(header_timeout)], stderr=subprocess.PIPE, text=True)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)", process.stderr.readline()).group(1))
    socks = []
    try:
        staller = connect(port)
        staller.sendall(HEAD)
        header_cut = seconds_until_closed(staller, time.monotonic())
        for query in [f"getBlob?did={DID}&cid={cid}"] * 3 + [f"getRepo?did={DID}"]:
            sock = connect(port, receive_buffer=16 << 10)
            sock.sendall(f"GET /xrpc/com.atproto.sync.{query} HTTP/1.1\r\nHost: pypds\r\n\r\n".encode())
            sock.recv(100)
            socks.append(sock)
        socks.append(connect(port))
        socks[-1].sendall(HEAD)
        socks.append(connect(port))
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        return header_cut, time.monotonic() - started
    finally:
        process.kill()
        process.stderr.close()
        for sock in socks:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--header-timeout", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cid = build(Path(tmp) / "repo")
        results = [one_run(Path(tmp) / "repo", cid, args.header_timeout) for _ in range(args.runs)]
    for name, values in zip(("header cut", "SIGTERM to exit"), zip(*results, strict=True), strict=True):
        shown = ", ".join(f"{value:.2f}" for value in values)
        spread = f"min {min(values):.2f}, median {statistics.median(values):.2f}, max {max(values):.2f}"
        print(f"{name:16} s: {shown}  ({spread})")


if __name__ == "__main__":
    main()
