'use strict'
// Preloaded (node --require, also through NODE_OPTIONS for child processes) into every Node
// process of the interop suite: a connection to anything but the loopback interface fails
// before a packet is sent, and no DNS query is made except for "localhost".
//
// Covered: net/tls/http/https/fetch (all connect through net.Socket.prototype.connect),
// dns.lookup, every dns resolve*/reverse (callback and promise forms, module level and
// Resolver classes), and UDP (dgram connect/send).
const net = require('node:net')
const dns = require('node:dns')
const dgram = require('node:dgram')

const PREFIX = 'loopback-only: refused'

function isLoopback(host) {
  if (host === undefined || host === null || host === '') return true // Node's default host is localhost
  const name = String(host).replace(/^\[(.*)\]$/, '$1').toLowerCase()
  if (name === 'localhost') return true
  if (net.isIPv4(name)) return name.startsWith('127.')
  if (net.isIPv6(name)) return name === '::1' || name.startsWith('::ffff:127.')
  return false
}

function refusal(what, code) {
  const err = new Error(`${PREFIX} ${what} (the interop suite talks to 127.0.0.1 only)`)
  err.code = code
  return err
}

// connect(options[, cb]) | connect(port[, host][, cb]) | connect(path[, cb]) | connect([options, cb]) (internal)
function connectTarget(args) {
  let first = args[0]
  if (Array.isArray(first)) first = first[0]
  if (first !== null && typeof first === 'object') {
    if (first.path) return null // a Unix socket
    return { host: first.host, port: first.port }
  }
  if (typeof first === 'string' && !/^\d+$/.test(first)) return null // a Unix socket path
  return { host: typeof args[1] === 'string' ? args[1] : undefined, port: first }
}

const originalConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function connect(...args) {
  const target = connectTarget(args)
  if (target !== null && !isLoopback(target.host)) {
    const err = refusal(`a connection to ${target.host}:${target.port}`, 'ECONNREFUSED')
    process.nextTick(() => this.destroy(err))
    return this
  }
  return originalConnect.apply(this, args)
}

const originalLookup = dns.lookup
dns.lookup = function lookup(hostname, ...rest) {
  if (!isLoopback(hostname)) {
    const callback = rest[rest.length - 1]
    process.nextTick(() => callback(refusal(`a DNS lookup of ${hostname}`, 'ENOTFOUND')))
    return {}
  }
  return originalLookup.call(this, hostname, ...rest)
}
const originalPromiseLookup = dns.promises.lookup
dns.promises.lookup = async function lookup(hostname, ...rest) {
  if (!isLoopback(hostname)) throw refusal(`a DNS lookup of ${hostname}`, 'ENOTFOUND')
  return originalPromiseLookup.call(this, hostname, ...rest)
}

function isQuery(key) {
  return key.startsWith('resolve') || key === 'reverse'
}

function refuseCallbackQueries(target) {
  for (const key of Object.getOwnPropertyNames(target).filter(isQuery)) {
    target[key] = function refused(name, ...rest) {
      const callback = rest[rest.length - 1]
      process.nextTick(() => callback(refusal(`a DNS query (${key} ${name})`, 'ECONNREFUSED')))
      return {}
    }
  }
}

function refusePromiseQueries(target) {
  for (const key of Object.getOwnPropertyNames(target).filter(isQuery)) {
    target[key] = async function refused(name) {
      throw refusal(`a DNS query (${key} ${name})`, 'ECONNREFUSED')
    }
  }
}

refuseCallbackQueries(dns)
refuseCallbackQueries(dns.Resolver.prototype)
refusePromiseQueries(dns.promises)
refusePromiseQueries(dns.promises.Resolver.prototype)

for (const method of ['connect', 'send']) {
  const original = dgram.Socket.prototype[method]
  dgram.Socket.prototype[method] = function guarded(...args) {
    const callback = typeof args[args.length - 1] === 'function' ? args[args.length - 1] : null
    const address = args.find((arg, i) => i > 0 && typeof arg === 'string')
    if (address !== undefined && !isLoopback(address)) {
      const err = refusal(`UDP to ${address}`, 'ECONNREFUSED')
      if (callback) process.nextTick(() => callback(err))
      else process.nextTick(() => this.emit('error', err))
      return
    }
    return original.apply(this, args)
  }
}
