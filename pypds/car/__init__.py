"""Layer 4, CAR v1 files: the verifying reader (:mod:`.reader`), the writer (:mod:`.writer`), a
repository CAR read in one streaming pass while its tree is checked (:mod:`.stream`), and the
stream-friendly block order check (:mod:`.order`)."""
