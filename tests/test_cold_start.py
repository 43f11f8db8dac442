"""Cold start: heavy modules are imported where they are used, not by ``import pypds`` or ``pypds get``.

The timings are in ``benchmarks/cold_start.py``; this checks what they rest on, in fresh processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pypds import Repo, generate_signing_key

from .conftest import DID, POST, post

ROOT = Path(__file__).resolve().parent.parent
#: Not needed to start, to read a record or to open a repository (each costs milliseconds to import).
HEAVY = ("cryptography", "coincurve", "multiformats", "aiohttp", "dns", "rich", "mimetypes")


def loaded_after(code: str) -> list[str]:
    """The HEAVY top-level modules loaded by a fresh interpreter after running ``code``."""
    script = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.split() if name in HEAVY]


def test_import_pypds_and_the_cli_load_no_heavy_module():
    assert loaded_after("import pypds, pypds.cli, pypds.cli.app") == []


def test_version_and_get_load_no_heavy_module(tmp_path):
    for curve in ("k256", "p256"):  # a stored key of either curve is not loaded to read
        path = tmp_path / curve
        with Repo.create(path, DID, signing_key=generate_signing_key(curve), store_key=True) as repo:
            repo.put(POST, "3jui7kd54zh2y", post(1))
        run = f"from pypds.cli import main\nassert main(['get', {str(path)!r}, {POST!r}, '3jui7kd54zh2y']) == 0"
        assert loaded_after(run) == []
    assert loaded_after("from pypds.cli import main\nassert main(['--version']) == 0") == []


def test_keys_load_their_libraries_when_they_sign_or_verify(tmp_path):
    code = (
        "import pypds\n"
        "key = pypds.load_signing_key('11' * 32)\n"
        "assert 'coincurve' not in sys.modules\n"
        "signature = key.sign(b'data')\n"
        "assert pypds.parse_did_key(key.did_key).verify(b'data', signature)\n"
    )
    assert loaded_after(code) == ["coincurve", "cryptography"]
