"""Layer 1, the data model: canonical DAG-CBOR (:mod:`.cbor`), CIDs (:mod:`.cid`) and the atproto
JSON form (:mod:`.atjson`). No I/O."""
