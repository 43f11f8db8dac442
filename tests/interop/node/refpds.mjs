// Start the reference PLC directory and PDS (@atproto/dev-env TestNetworkNoAppView) on
// localhost, print one JSON line with their addresses, and run until stdin closes or a
// SIGTERM/SIGINT arrives. Run with loopback-only.cjs preloaded (see tests/interop/conftest.py).
import { ADMIN_PASSWORD, TestNetworkNoAppView } from '@atproto/dev-env'

const network = await TestNetworkNoAppView.create()
const pds = network.pds
process.stdout.write(
  JSON.stringify({
    pds: pds.url,
    plc: network.plc.url,
    pdsDid: pds.ctx.cfg.service.did,
    handleDomains: pds.ctx.cfg.identity.serviceHandleDomains,
    adminPassword: ADMIN_PASSWORD,
    node: process.version,
  }) + '\n',
)

let closing = false
async function shutdown() {
  if (closing) return
  closing = true
  try {
    await network.close()
  } finally {
    process.exit(0)
  }
}
process.stdin.on('end', shutdown)
process.stdin.on('error', shutdown)
process.stdin.resume()
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
