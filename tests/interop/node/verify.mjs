// The reference verifier (@atproto/repo) on files pypds produced. Prints one JSON line.
//
//   node verify.mjs repo  CAR DID DIDKEY           full repository CAR: verifyRepoCar (signature,
//       every node and record present), then the MST rebuilt from the records by the reference
//       code must have the commit's data root (so pypds' tree shape is the reference's)
//   node verify.mjs proof CAR DID DIDKEY CLAIMS    getRecord proof CAR: verifyProofs with CLAIMS, a
//       JSON list of {collection, rkey, cid} (cid null claims absence)
import { readFileSync } from 'node:fs'
import { CID } from 'multiformats/cid'
import { MST, MemoryBlockstore, def, readCarWithRoot, verifyProofs, verifyRepoCar } from '@atproto/repo'

const [mode, carPath, did, didKey, claimsJson] = process.argv.slice(2)
const car = new Uint8Array(readFileSync(carPath))

async function verifyRepository() {
  const verified = await verifyRepoCar(car, did, didKey)
  const { root, blocks } = await readCarWithRoot(car)
  const commit = await new MemoryBlockstore(blocks).readObj(root, def.commit)
  let mst = await MST.create(new MemoryBlockstore())
  for (const write of verified.creates) {
    mst = await mst.add(`${write.collection}/${write.rkey}`, write.cid)
  }
  const rebuilt = await mst.getPointer()
  return {
    commit: root.toString(),
    rev: commit.rev,
    data: commit.data.toString(),
    records: verified.creates.map((w) => [`${w.collection}/${w.rkey}`, w.cid.toString()]),
    rebuiltData: rebuilt.toString(),
  }
}

async function verifyProof() {
  const claims = JSON.parse(claimsJson).map((c) => ({ ...c, cid: c.cid === null ? null : CID.parse(c.cid) }))
  const { verified, unverified } = await verifyProofs(car, claims, did, didKey)
  const show = (list) => list.map((c) => ({ ...c, cid: c.cid === null ? null : c.cid.toString() }))
  return { verified: show(verified), unverified: show(unverified) }
}

try {
  const result = mode === 'repo' ? await verifyRepository() : await verifyProof()
  process.stdout.write(JSON.stringify({ ok: true, ...result }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err?.message ?? err) }) + '\n')
  process.exitCode = 1
}
