// An independent SPDY/3.1 client for berth's streaming server tests, built on
// node-spdy's transport (spdy-transport), not on berth's code. It does the
// HTTP/1.1 upgrade by hand, then opens streams the way client-go does.
//
// node client.js HOST:PORT PATH PROTOCOL SCENARIO [JSON-OPTIONS]
// Prints one JSON line with what it saw; exits 1 on any error.
'use strict'

const net = require('net')
const crypto = require('crypto')
const transport = require('spdy-transport')

const [hostport, path, protocol, scenario, optsJson] = process.argv.slice(2)
const opts = optsJson ? JSON.parse(optsJson) : {}
const [host, port] = hostport.split(':')

let finished = false
function fail (err) {
  // Errors from tearing the session down after the result are not results.
  if (finished) return
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + '\n')
  process.exit(1)
}
process.on('uncaughtException', fail)
setTimeout(() => fail('client timed out'), opts.timeoutMs || 120000).unref()

function upgrade () {
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), host)
    // As Go's net package (kubectl, client-go) does by default: without it a
    // small WINDOW_UPDATE waits for the delayed ACK (40 ms a window).
    sock.setNoDelay(true)
    sock.once('error', reject)
    sock.on('connect', () => {
      sock.write(`POST ${path} HTTP/1.1\r\nHost: ${hostport}\r\n` +
        'Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n' +
        `X-Stream-Protocol-Version: ${protocol}\r\nContent-Length: 0\r\n\r\n`)
    })
    let buf = Buffer.alloc(0)
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk])
      const end = buf.indexOf('\r\n\r\n')
      if (end < 0) return
      sock.removeListener('data', onData)
      sock.pause()
      const head = buf.slice(0, end).toString()
      const rest = buf.slice(end + 4)
      const lines = head.split('\r\n')
      if (!/^HTTP\/1\.1 101/.test(lines[0])) return reject(new Error('no upgrade: ' + head))
      const headers = {}
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':')
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      if (headers.upgrade !== 'SPDY/3.1') return reject(new Error('bad Upgrade: ' + head))
      if (rest.length) sock.unshift(rest)
      resolve({ sock, headers })
    }
    sock.on('data', onData)
  })
}

function session (sock) {
  const conn = transport.connection.create(sock, {
    protocol: 'spdy',
    isServer: false,
    // A small receive window: the server must honour it (node-spdy resets
    // the stream on overflow).
    windowSize: opts.windowSize || 64 * 1024
  })
  conn.start(3.1)
  conn.on('error', fail)
  return conn
}

function open (conn, headers) {
  return new Promise((resolve, reject) => {
    const s = conn.request({ method: 'POST', path: '/', host: hostport, headers }, (err) => {
      if (err) reject(err)
    })
    s.once('response', () => resolve(s))
    s.once('error', reject)
  })
}

function collect (stream, keep) {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash('sha256')
    let len = 0
    let text = Buffer.alloc(0)
    stream.on('data', (d) => {
      h.update(d)
      len += d.length
      if (text.length < keep) text = Buffer.concat([text, d.slice(0, keep - text.length)])
    })
    stream.on('end', () => resolve({ len, sha256: h.digest('hex'), text: text.toString() }))
    stream.on('error', reject)
  })
}

function writeAll (stream, total, hash) {
  return new Promise((resolve, reject) => {
    let sent = 0
    const pump = () => {
      while (sent < total) {
        const n = Math.min(64 * 1024, total - sent)
        const chunk = crypto.randomBytes(n)
        hash.update(chunk)
        sent += n
        if (!stream.write(chunk)) return stream.once('drain', pump)
      }
      stream.end()
      resolve()
    }
    stream.on('error', reject)
    pump()
  })
}

async function exec () {
  const { sock, headers } = await upgrade()
  const conn = session(sock)
  const streams = {}
  // client-go creates the error stream first, then the others.
  for (const t of opts.streams) streams[t] = await open(conn, { streamtype: t })
  if (scenario === 'gone') {
    // Vanish without a word.
    setTimeout(() => { sock.destroy(); out({ protocol: headers['x-stream-protocol-version'] }) }, 200)
    return
  }
  streams.error.end()
  const waits = {}
  const pause = opts.pauseMs || 0
  for (const t of ['stdout', 'stderr', 'error']) {
    if (!streams[t]) continue
    const s = streams[t]
    if (t === 'stdout' && pause) {
      // Not reading yet: the server has to stop at our window.
      s.pause()
      setTimeout(() => s.resume(), pause)
    }
    waits[t] = collect(s, 4096)
  }
  if (streams.resize) {
    for (const [w, h] of opts.resize || []) {
      streams.resize.write(JSON.stringify({ Width: w, Height: h }) + '\n')
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
  if (streams.stdin) {
    if (opts.stdin) streams.stdin.write(opts.stdin)
    streams.stdin.end()
  }
  const res = { protocol: headers['x-stream-protocol-version'] }
  for (const t of Object.keys(waits)) res[t] = await waits[t]
  out(res)
}

async function portForward () {
  const { sock } = await upgrade()
  const conn = session(sock)
  const one = async (i) => {
    const h = { port: String(opts.port), requestid: String(i) }
    const err = await open(conn, Object.assign({ streamtype: 'error' }, h))
    err.end()
    const errText = collect(err, 4096)
    const data = await open(conn, Object.assign({ streamtype: 'data' }, h))
    const sent = crypto.createHash('sha256')
    const got = collect(data, 0)
    await writeAll(data, opts.size, sent)
    const r = await got
    const e = await errText
    return { id: i, sent: sent.digest('hex'), got: r.sha256, len: r.len, error: e.text }
  }
  const all = []
  for (let i = 0; i < opts.conns; i++) all.push(one(i))
  out({ results: await Promise.all(all) })
}

// Port-forwarded HTTP/1.0 GETs (opts.path) over opts.conns concurrent
// connections: the body's length and sha256 per connection.
async function httpGets () {
  const { sock } = await upgrade()
  const conn = session(sock)
  const one = async (i) => {
    const h = { port: String(opts.port), requestid: String(i) }
    const err = await open(conn, Object.assign({ streamtype: 'error' }, h))
    err.end()
    const errText = collect(err, 4096)
    const data = await open(conn, Object.assign({ streamtype: 'data' }, h))
    const body = new Promise((resolve, reject) => {
      const hash = crypto.createHash('sha256')
      let head = Buffer.alloc(0)
      let inBody = false
      let len = 0
      data.on('data', (d) => {
        if (!inBody) {
          head = Buffer.concat([head, d])
          const end = head.indexOf('\r\n\r\n')
          if (end < 0) return
          inBody = true
          d = head.slice(end + 4)
          head = head.slice(0, end)
        }
        hash.update(d)
        len += d.length
      })
      data.on('end', () => resolve({ status: head.toString().split('\r\n')[0], len, sha256: hash.digest('hex') }))
      data.on('error', reject)
    })
    data.end(`GET ${opts.path} HTTP/1.0\r\nHost: pod\r\n\r\n`)
    const r = await body
    const e = await errText
    return Object.assign({ id: i, error: e.text }, r)
  }
  const all = []
  for (let i = 0; i < opts.conns; i++) all.push(one(i))
  out({ results: await Promise.all(all) })
}

function out (o) {
  finished = true
  process.stdout.write(JSON.stringify(o) + '\n')
  setTimeout(() => process.exit(0), 50)
}

const run = { pf: portForward, http: httpGets }[scenario] || exec
run().catch(fail)
