// Start the real Bluesky reference PDS and an in-memory PLC directory on loopback.
//
// Why one script: the tests need a genuine @atproto/pds (app-password sessions, token rotation,
// ExpiredToken answers, no AppView) but nothing of it may leave the machine. This runs both in one
// Node 22 process, bound to 127.0.0.1 on free ports, and prints ONE ready line on stdout:
//
//   {"ready":true,"pds_url":"http://localhost:P","plc_url":"http://localhost:Q","service_did":"did:web:localhost"}
//
// Inputs (environment):
//   PEERS_MODULES      the node_modules directory install-pds.sh filled (outside the checkout)
//   PEERS_DATA_DIR     an empty directory for the PDS's SQLite files and blobs
//   PDS_JWT_SECRET     HS256 secret for access/refresh JWTs (the tests mint expired tokens with it)
//   PDS_ADMIN_PASSWORD the admin password
//   PDS_RATE_LIMITS    "1" (default) enables the PDS's own rate limits (createSession 30/5 min)
// It stops on SIGTERM/SIGINT, and when its stdin closes (the test process went away).
//
// Facts this relies on are in ../shared/peers.md: hostname must stay "localhost" (plain-http
// URLs), didPlcUrl must name a host rather than an IP, `.test` handles have no DNS (so the handle
// resolver is taught to answer from the PDS's own accounts), there is no AppView.

import http from 'node:http'
import { createRequire } from 'node:module'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const modules = process.env.PEERS_MODULES
const dataDir = process.env.PEERS_DATA_DIR
if (!modules || !dataDir) {
  console.error('start-pds: PEERS_MODULES and PEERS_DATA_DIR are required')
  process.exit(2)
}
const require = createRequire(path.join(modules, 'noop.js'))
const load = async (name) => import(pathToFileURL(require.resolve(name)).href)

const { PDS, envToCfg, envToSecrets } = await load('@atproto/pds')
const { PlcServer, Database } = require('@did-plc/server')
const { Secp256k1Keypair } = await load('@atproto/crypto')

const HOST = '127.0.0.1'

// express's app.listen(port) binds every interface: pin it to loopback
function bindLoopback(app) {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, HOST, ...rest)
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = http.createServer()
    probe.once('error', reject)
    probe.listen(0, HOST, () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

const plc = PlcServer.create({ db: Database.mock(), port: 0 })
bindLoopback(plc.app)
const plcServer = await plc.start()
const plcUrl = `http://localhost:${plcServer.address().port}`

const rotationKey = await Secp256k1Keypair.create({ exportable: true })
const rotationHex = Buffer.from(await rotationKey.export()).toString('hex')
const port = await freePort()

const env = {
  port,
  hostname: 'localhost',
  devMode: true,
  dataDirectory: dataDir,
  blobstoreDiskLocation: path.join(dataDir, 'blobs'),
  didPlcUrl: plcUrl,
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  disableSsrfProtection: true,
  jwtSecret: process.env.PDS_JWT_SECRET || 'pds-test-jwt-secret',
  adminPassword: process.env.PDS_ADMIN_PASSWORD || 'pds-test-admin',
  plcRotationKeyK256PrivateKeyHex: rotationHex,
  // placeholders: nothing answers there, which is exactly the "no AppView" case
  bskyAppViewUrl: 'http://localhost:1',
  bskyAppViewDid: 'did:example:appview',
  modServiceUrl: 'http://localhost:1',
  modServiceDid: 'did:example:mod',
  rateLimitsEnabled: (process.env.PDS_RATE_LIMITS ?? '1') === '1',
  crawlers: [],
}
const pds = await PDS.create(envToCfg(env), envToSecrets(env))

// `.test` handles have no DNS: resolve them from this PDS's own accounts
const handles = pds.ctx.idResolver.handle
const resolveOnline = handles.resolve.bind(handles)
handles.resolve = async (handle) => {
  const account = await pds.ctx.accountManager.getAccount(handle)
  return account?.did ?? resolveOnline(handle)
}

bindLoopback(pds.app)
await pds.start()

process.stdout.write(
  JSON.stringify({
    ready: true,
    pds_url: `http://localhost:${port}`,
    plc_url: plcUrl,
    service_did: pds.ctx.cfg.service.did,
  }) + '\n',
)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  const timer = setTimeout(() => process.exit(1), 5000)
  try {
    await pds.destroy()
    await plc.destroy()
  } finally {
    clearTimeout(timer)
    process.exit(0)
  }
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
process.stdin.on('end', stop)
process.stdin.on('error', stop)
process.stdin.resume()
