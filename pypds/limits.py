"""Named safety limits applied to untrusted input.

Each limit is a module-level constant and a field of :class:`Limits`; pass a
``Limits`` instance (for example ``Limits(max_record_bytes=2 << 20)``) to the
functions that accept ``limits=`` to override them. Exceeding a limit raises
:class:`pypds.errors.LimitExceeded` naming it, before the guarded work starts.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest CAR header, checked before it is read.
MAX_CAR_HEADER_BYTES = 1 << 16
#: Largest CAR section (CID + block), checked before it is read.
MAX_CAR_SECTION_BYTES = 2 << 20
#: Largest record block (atproto: 1 MiB).
MAX_RECORD_BYTES = 1 << 20
#: Longest MST key / repo path in bytes.
MAX_MST_KEY_BYTES = 1024
#: Most entries in one MST node (real trees average ~4).
MAX_MST_NODE_ENTRIES = 8192
#: Deepest MST (layers from root to leaf); heights come from SHA-256, so
#: honest trees stay far below this.
MAX_MST_DEPTH = 128
#: Deepest nesting of lists and maps inside a record.
MAX_CBOR_DEPTH = 128
#: Most blocks accepted from one CAR import.
MAX_IMPORT_BLOCKS = 20_000_000
#: Most bytes of block data read from one CAR import (or verification).
MAX_IMPORT_BYTES = 8 << 30
#: Most bytes of blocks that arrive before the tree walk asks for them held
#: in memory by one import; beyond it they wait in a temporary file.
MAX_SPILL_MEMORY_BYTES = 64 << 20


@dataclass(frozen=True)
class Limits:
    """A set of limits; the defaults are the module constants."""

    max_car_header_bytes: int = MAX_CAR_HEADER_BYTES
    max_car_section_bytes: int = MAX_CAR_SECTION_BYTES
    max_record_bytes: int = MAX_RECORD_BYTES
    max_mst_key_bytes: int = MAX_MST_KEY_BYTES
    max_mst_node_entries: int = MAX_MST_NODE_ENTRIES
    max_mst_depth: int = MAX_MST_DEPTH
    max_cbor_depth: int = MAX_CBOR_DEPTH
    max_import_blocks: int = MAX_IMPORT_BLOCKS
    max_import_bytes: int = MAX_IMPORT_BYTES
    max_spill_memory_bytes: int = MAX_SPILL_MEMORY_BYTES


DEFAULT_LIMITS = Limits()
