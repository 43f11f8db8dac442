"""Layer 8, the network: the XRPC client (:mod:`.xrpc`), handle and DID resolution
(:mod:`.identity`), the sync API server (:mod:`.server`), downloads (:mod:`.downloader`), pushes to a
PDS (:mod:`.pusher`) and service-auth tokens (:mod:`.service_auth`). Nothing below imports it, and
``import pypds`` does not import it (or aiohttp): the package exports these lazily."""
