"""Measure what a hostile or huge download costs: peak memory with large blobs, time to drop a drip.

    python -m benchmarks.download [--blobs 4] [--blob-mib 200] [--drip-retries 0] [--skip-drip]

* **Blobs.** A repository with ``--blobs`` random blobs of ``--blob-mib`` MiB
  each is served by ``pypds serve`` in its own process; a separate process
  downloads it (``pypds.download``, 4 blobs at once) and reports its own
  peak RSS (``VmHWM``, Linux), once without blobs and once with them.
* **Drip.** A server answers ``getRepo`` with 200 and then one byte per
  second; ``pypds download`` runs with its defaults (``--min-rate 4096``
  over 30 s windows) and ``--retries`` as given; the time until it gives up
  is reported.

Everything listens on 127.0.0.1. Not a test: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web

from pypds import Repo
from pypds.net.server import start_server

DID = "did:plc:w4xbfzo7kqfes5zb7r6qv3rw"
POST = "app.bsky.feed.post"

# Peak RSS is VmHWM (Linux): ru_maxrss would include the parent's, inherited through fork.
CHILD = """
import json, sys
from pypds import ResolverConfig, download
plc, copy, did, blobs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
config = ResolverConfig(plc_url=plc, dns=False, well_known=False, verify_handle=False, allow_private_network=True)
report = download(did, copy, blobs=blobs, config=config)
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "fetched": len(report.blobs_fetched), "failed": len(report.blobs_failed)}))
"""


class Background:
    """An aiohttp application on 127.0.0.1:<free port>, served from a thread."""

    def __init__(self, app: web.Application) -> None:
        self.app, self.url = app, ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        runner = await start_server(self.app, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        self.url, self._loop, self._stop = f"http://{host}:{port}", asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Background:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def plc_stub(documents: dict[str, dict]) -> web.Application:
    async def document(request: web.Request) -> web.Response:
        return web.json_response(documents[request.match_info["did"]])

    app = web.Application()
    app.router.add_get("/{did}", document)
    return app


def did_document(key: str, pds: str) -> dict:
    return {
        "id": DID,
        "alsoKnownAs": [],
        "verificationMethod": [
            {"id": f"{DID}#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key[8:]}
        ],
        "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}],
    }


def serve(path: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "pypds.cli", "serve", str(path), "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stderr], [], [], 30)
    line = process.stderr.readline() if ready else ""
    found = re.search(r" at (http://127\.0\.0\.1:\d+) ", line)
    if found is None:
        process.kill()
        raise SystemExit(f"pypds serve did not start: {line!r}")
    return process, found.group(1)


def blob_figures(work: Path, count: int, mib: int) -> None:
    source = work / "source"
    with Repo.create(source, DID) as repo:
        for i in range(count):
            ref = repo.put_blob(os.urandom(mib << 20), "video/mp4")
            record = {"$type": POST, "text": f"video {i}", "createdAt": "2024-01-01T00:00:00Z"}
            repo.put(POST, f"3kzfcijpvideo{i}", {**record, "embed": {"video": ref.to_record()}})
        key = repo.did_key or ""
    server, pds = serve(source)
    try:
        documents = {DID: did_document(key, pds)}
        with Background(plc_stub(documents)) as plc:
            for blobs in (False, True):
                copy = work / f"copy-{int(blobs)}"
                started = time.monotonic()
                command = [sys.executable, "-c", CHILD, plc.url, str(copy), DID, "1" if blobs else "0"]
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                seconds = time.monotonic() - started
                measured = json.loads(result.stdout)
                what = f"with {count} x {mib} MiB blobs" if blobs else "without blobs"
                print(
                    f"download {what}: peak RSS {measured['peak'] / (1 << 20):.0f} MiB, "
                    f"{measured['fetched']} fetched, {measured['failed']} failed, {seconds:.1f} s"
                )
    finally:
        server.terminate()
        server.wait(10)


def drip_figure(work: Path, retries: int) -> None:
    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
        response.content_length = 1 << 30
        await response.prepare(request)
        try:
            while True:
                await response.write(b" ")
                await asyncio.sleep(1.0)
        except (ConnectionError, RuntimeError):
            return response

    pds_app = web.Application()
    pds_app.router.add_get("/xrpc/com.atproto.sync.getRepo", drip)
    with Background(pds_app) as pds:
        documents = {DID: did_document("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme", pds.url)}
        with Background(plc_stub(documents)) as plc:
            command = [sys.executable, "-m", "pypds.cli", "download", DID, "-o", str(work / "dripped")]
            command += ["--plc-url", plc.url, "--allow-private-network", "--quiet", "--retries", str(retries)]
            started = time.monotonic()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds = time.monotonic() - started
    print(f"server dripping 1 byte/s, --retries {retries}: gave up after {seconds:.1f} s (exit {result.returncode})")
    print(f"  {result.stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=4)
    parser.add_argument("--blob-mib", type=int, default=200)
    parser.add_argument("--drip-retries", type=int, default=0)
    parser.add_argument("--skip-drip", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pypds-download-bench-") as tmp:
        blob_figures(Path(tmp), args.blobs, args.blob_mib)
        if not args.skip_drip:
            drip_figure(Path(tmp), args.drip_retries)


if __name__ == "__main__":
    main()
