'use strict'
// Self-test of loopback-only.cjs that cannot send a packet even if the preload is broken:
// the real connect/send/resolve are replaced by recorders *before* the preload wraps them,
// so a call the preload lets through only lands in a recorder. Prints one JSON line:
// {refused: {call: message}, passed: [calls that reached a recorder]}.
const net = require('node:net')
const tls = require('node:tls')
const dns = require('node:dns')
const dgram = require('node:dgram')
const path = require('node:path')

const passed = []
net.Socket.prototype.connect = function recorder(...args) {
  passed.push(`connect ${JSON.stringify(args[0]?.[0] ?? args[0])?.slice(0, 80)}`)
  process.nextTick(() => this.destroy(new Error('recorder: not connected')))
  return this
}
dns.lookup = function recorder(host, ...rest) {
  passed.push(`lookup ${host}`)
  process.nextTick(() => rest[rest.length - 1](new Error('recorder')))
}
dns.resolveTxt = function recorder(name, cb) {
  passed.push(`resolveTxt ${name}`)
  process.nextTick(() => cb(new Error('recorder')))
}
dns.promises.resolveTxt = async function recorder(name) {
  passed.push(`promises.resolveTxt ${name}`)
  throw new Error('recorder')
}
dgram.Socket.prototype.send = function recorder(...args) {
  passed.push(`udp send ${args.filter((a) => typeof a === 'string').join(' ')}`)
}

require(path.join(__dirname, 'loopback-only.cjs'))

const refused = {}
function outcome(name, promise) {
  return promise.then(
    () => {},
    (err) => {
      const cause = String(err?.message).startsWith('loopback-only') ? err : err?.cause // fetch wraps it
      if (String(cause?.message).startsWith('loopback-only: refused')) refused[name] = cause.message
    },
  )
}
function socketOutcome(name, socket) {
  return outcome(name, new Promise((resolve, reject) => socket.on('error', reject).on('connect', resolve)))
}

const TEST_NET = '192.0.2.1' // TEST-NET-1, documentation only
const checks = [
  socketOutcome('net.connect ip', net.connect(80, TEST_NET)),
  socketOutcome('net.connect name', net.connect({ host: 'example.com', port: 80 })),
  socketOutcome('tls.connect', tls.connect({ host: TEST_NET, port: 443 })),
  socketOutcome('net.connect ipv6', net.connect({ host: '2001:db8::1', port: 80 })),
  outcome('fetch', fetch(`http://${TEST_NET}/`)),
  outcome('dns.lookup', dns.promises.lookup('example.com')),
  outcome('dns.lookup callback', new Promise((res, rej) => dns.lookup('example.com', (e) => (e ? rej(e) : res())))),
  outcome('dns.resolveTxt', new Promise((res, rej) => dns.resolveTxt('example.com', (e) => (e ? rej(e) : res())))),
  outcome('dns.promises.resolveTxt', dns.promises.resolveTxt('example.com')),
  outcome('Resolver.resolveTxt', new dns.promises.Resolver().resolveTxt('example.com')),
  outcome('udp send', new Promise((res, rej) => dgram.createSocket('udp4').send('x', 53, TEST_NET, (e) => (e ? rej(e) : res())))),
  socketOutcome('net.connect loopback', net.connect(9, '127.0.0.1')),
  socketOutcome('net.connect localhost', net.connect({ host: 'localhost', port: 9 })),
]
Promise.all(checks).then(() => {
  process.stdout.write(JSON.stringify({ refused, passed }) + '\n')
  process.exit(0)
})
