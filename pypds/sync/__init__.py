"""Layer 5, what repositories exchange, checked without a store: record proofs (:mod:`.proof`),
firehose ``#commit`` messages and covering proofs (:mod:`.firehose`), and full verification as a
report (:mod:`.verify`)."""
