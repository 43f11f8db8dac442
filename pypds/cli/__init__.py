"""The ``pypds`` command line: a thin shell over :class:`pypds.Repo` and :func:`pypds.verify_car`.

Each command does what the library call of the same meaning does (``ls`` is
``Repo.list``, ``verify`` is ``verify_car`` / ``Repo.verify``, ``diff`` is
``Repo.diff`` / ``pypds.mst.diff_trees``...). Read-only commands accept a
repository directory or a CAR file (``-``: stdin); a CAR is loaded with full
verification into a temporary repository, so both take the same code path.

Exit status: 0 success, 1 a check failed (corrupt data, bad signature,
failed verification), 2 usage or input error, 3 network failure.

Layout: ``app`` (the group, ``main``, error mapping and which module holds
each command), one module per noun (``repository``, ``records``, ``car``,
``refs``, ``blobs``, ``net``), ``common`` (parameter types, sources,
progress bars, output helpers).
"""

from .app import cli, main

__all__ = ["cli", "main"]
