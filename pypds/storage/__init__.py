"""Layer 6, what lives on disk: ``pds.db`` (:mod:`.store`), the ``blobs/`` tree (:mod:`.blobs`) and a
handle's cache of recently read records (:mod:`.record_cache`)."""
