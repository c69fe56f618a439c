// Test harness: starts the real carpool binary and the simulator on loopback (port 0, read back),
// talks to them over real HTTP, and checks carpool's log for alerts and sanitizer reports.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const net = require('node:net');
const assert = require('node:assert/strict');
const nodeTest = require('node:test');
const { embedding } = require('./simgen');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.CARPOOL_BIN_DIR || path.join(ROOT, 'bin');
// CARPOOL_E2E_IO_URING=auto|on|off: every config startCarpool writes gets `io_uring: VALUE` unless it
// sets io_uring itself, so that a whole run covers one write path (CI runs the Node 18 pass with off).
const IO_URING = process.env.CARPOOL_E2E_IO_URING || '';
if (IO_URING && !['auto', 'on', 'off'].includes(IO_URING))
  throw new Error(`CARPOOL_E2E_IO_URING=${IO_URING}: not one of auto, on, off`);

// node:test's test() with a timeout by default: a hang fails the test with a message, never a stuck
// run. Every e2e file takes `test` from here; a test that needs longer passes its own { timeout }.
const TEST_TIMEOUT_MS = Number(process.env.CARPOOL_TEST_TIMEOUT_MS) || 60000;
function test(name, opts, fn) {
  if (typeof opts === 'function') return nodeTest.test(name, { timeout: TEST_TIMEOUT_MS }, opts);
  return nodeTest.test(name, { timeout: TEST_TIMEOUT_MS, ...opts }, fn);
}

function tmpdir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'carpool-e2e-'));
}

// Waits until `re` matches the accumulated text of `stream`; resolves with the match.
function waitFor(proc, which, re, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${re} in ${which}: ${buf}`)), timeoutMs);
    const onData = (d) => {
      buf += d.toString();
      const m = buf.match(re);
      if (m) {
        clearTimeout(timer);
        proc[which].off('data', onData);
        resolve(m);
      }
    };
    proc[which].on('data', onData);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${which}: process exited (${code}) before ${re}: ${buf}`));
    });
  });
}

async function startSim(args = []) {
  const proc = spawn(path.join(BIN, 'carpool-sim'), ['--listen', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  const m = await waitFor(proc, 'stdout', /listening on 127\.0\.0\.1:(\d+)/);
  const port = Number(m[1]);
  return {
    proc,
    port,
    url: `http://127.0.0.1:${port}`,
    stderr: () => err,
    stats: async () => JSON.parse((await request(port, 'GET', '/stats')).body),
    reset: async () => request(port, 'POST', '/stats/reset', ''),
    kill: (sig = 'SIGTERM') => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      proc.once('exit', () => resolve());
      proc.kill(sig);
    }),
  };
}

// A minimal YAML writer for config objects (maps, lists, scalars).
function toYaml(v, indent = '') {
  if (Array.isArray(v)) {
    return v.map((item) => {
      if (item && typeof item === 'object') {
        const inner = toYaml(item, indent + '  ').replace(/^\s+/, '');
        return `${indent}- ${inner}`;
      }
      return `${indent}- ${JSON.stringify(item)}`;
    }).join('\n');
  }
  return Object.entries(v).map(([k, val]) => {
    if (val && typeof val === 'object') {
      if (Array.isArray(val) && val.length === 0) return `${indent}${k}: []`;
      return `${indent}${k}:\n${toYaml(val, indent + '  ')}`;
    }
    return `${indent}${k}: ${typeof val === 'string' ? JSON.stringify(val) : val}`;
  }).join('\n');
}

// wrap: a command line that runs carpool (e.g. ['prlimit', '--nofile=128:128']); it must exec it.
async function startCarpool(cfg, { env = {}, expectFail = false, wrap = [] } = {}) {
  const dir = tmpdir();
  const file = path.join(dir, 'carpool.yaml');
  let text = typeof cfg === 'string' ? cfg : toYaml(cfg) + '\n';
  if (IO_URING && !/^io_uring:/m.test(text)) text += `${text.endsWith('\n') ? '' : '\n'}io_uring: ${IO_URING}\n`;
  fs.writeFileSync(file, text);
  const argv = [...wrap, path.join(BIN, 'carpool'), '-c', file];
  const proc = spawn(argv[0], argv.slice(1), {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  proc.stdout.on('data', (d) => { log += d; });
  if (expectFail) {
    const code = await new Promise((resolve) => proc.once('exit', resolve));
    return { code, log: () => log, file, dir };
  }
  const m = await waitFor(proc, 'stderr', /listening on 127\.0\.0\.1:(\d+)[\s\S]*ready/);
  const port = Number(m[1]);
  const cp = {
    proc, port, dir, file,
    url: `http://127.0.0.1:${port}`,
    log: () => log,
    metrics: async () => {
      const r = await request(port, 'GET', '/metrics');
      const out = {};
      for (const line of r.body.split('\n')) {
        const mm = line.match(/^(\w+(?:\{[^}]*\})?) (\S+)$/);
        if (mm) out[mm[1]] = Number(mm[2]);
      }
      return out;
    },
    // Stops carpool with SIGTERM and asserts a clean exit and a clean log.
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((resolve) => proc.once('exit', (code, sig) => resolve({ code, sig })));
        proc.kill('SIGTERM');
        const { code, sig } = await exited;
        assert.equal(sig, null, `carpool died of ${sig}\n${log}`);
        assert.equal(code, 0, `carpool exit code ${code}\n${log}`);
      }
      assertCleanLog(log);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return cp;
}

function assertCleanLog(log) {
  for (const bad of [' crit ', ' alert ', 'AddressSanitizer', 'LeakSanitizer', 'ThreadSanitizer', 'runtime error:', 'Segmentation']) {
    assert.ok(!log.includes(bad), `carpool log contains "${bad}":\n${log.slice(-4000)}`);
  }
}

function baseConfig(sim, extra = {}) {
  const cfg = {
    workers: extra.workers || 1, // batches form per worker: one worker keeps batch counts exact in tests
    listen: [{ address: '127.0.0.1:0' }],
    upstreams: [{ url: sim.url, dialect: 'auto', ...(extra.upstream || {}) }],
    batching: { policy: 'fixed', max_wait_ms: 30, max_batch_size: 64, ...(extra.batching || {}) },
    log: { level: 'info' },
  };
  for (const k of ['limits', 'timeouts', 'auth']) if (extra[k]) cfg[k] = extra[k];
  return cfg;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 2000 });

// One HTTP request; resolves {status, headers, body}.
function request(port, method, p, body, headers = {}, opts = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = http.request({
      host: '127.0.0.1', port, method, path: p, agent: opts.agent || agent,
      headers: { ...(data !== undefined ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } : {}), ...headers },
    }, (res) => {
      let chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.timeoutMs) req.setTimeout(opts.timeoutMs, () => req.destroy(new Error('timeout')));
    if (data !== undefined) req.write(data);
    req.end();
  });
}

// A loopback port nothing listens on (for now: an upstream to start later, or never).
async function freePort() {
  const s = http.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// GET /readyz until it answers 200 or timeoutMs passes; resolves with the last status. carpool is
// ready once an upstream has answered (a probe, a poll, a health check, a call), just after start.
async function readyz(port, timeoutMs = 5000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const { status } = await request(port, 'GET', '/readyz');
    if (status === 200 || Date.now() > until) return status;
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Parses an SSE body into events: [{field:'data'|'error', data}], with '[DONE]' kept as data.
function parseSse(text) {
  const events = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (!block.trim()) continue;
    let field = null;
    const lines = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) continue;
      const m = line.match(/^(data|error): ?(.*)$/);
      if (m) { field = m[1]; lines.push(m[2]); }
    }
    if (field) events.push({ field, data: lines.join('\n') });
  }
  return events;
}

// Collects a streamed completion: per index text and finish_reason; asserts one [DONE] at the end.
function collect(events) {
  const out = { text: {}, finish: {}, usage: null, chunks: [], done: 0, errors: [] };
  for (const ev of events) {
    if (ev.data === '[DONE]') { out.done++; continue; }
    if (out.done) throw new Error('event after [DONE]');
    const j = JSON.parse(ev.data);
    if (ev.field === 'error' || j.error) { out.errors.push(j); continue; }
    out.chunks.push(j);
    if (j.usage && j.choices.length === 0) out.usage = j.usage;
    for (const c of j.choices) {
      out.text[c.index] = (out.text[c.index] || '') + c.text;
      if (c.finish_reason) out.finish[c.index] = c.finish_reason;
    }
  }
  return out;
}

// Asserts an embeddings response's `data` against the simulator's vectors for `inputs`: one entry
// per input, in order, numbered from 0, each vector of the full length and within 1e-6 (the sim
// writes exact doubles; float32 or rounding upstream would still pass).
function assertEmbeddings(data, inputs, what = 'embeddings') {
  assert.equal(data.length, inputs.length, `${what}: ${data.length} vectors for ${inputs.length} inputs`);
  data.forEach((d, k) => {
    const want = embedding(inputs[k]);
    assert.equal(d.index, k, `${what}: entry ${k} has index ${d.index}`);
    assert.equal(d.embedding.length, want.length, `${what}: input ${k} has ${d.embedding.length} dimensions`);
    d.embedding.forEach((v, x) => assert.ok(Math.abs(v - want[x]) < 1e-6, `${what}: input ${k}, dimension ${x}: ${v} != ${want[x]}`));
  });
}

// The worker that answered the GET /healthz probe of `client` ("127.0.0.1:PORT"), from the access log.
async function probeWorker(access, client) {
  for (let i = 0; i < 200; i++) {
    const line = access().find((l) => l.client === client && l.route === '/healthz');
    if (line) return line.worker;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no access log line for the probe from ${client}`);
}

// Opens raw connections to carpool until each of its `workers` has `perWorker` of them, and says
// which worker holds each: a GET /healthz probe on every connection, then the access log line of
// that probe (its client port). Which worker accepts a connection is the kernel's choice; this makes
// "on both workers" a fact the test knows instead of a hope. `access()` returns the parsed access log
// lines. Resolves [{sock, worker, client}] (client as the access log writes it), the probes' answers
// read; surplus connections are closed.
async function connectOnWorkers(port, access, { workers = 2, perWorker = 1, maxConns = 400 } = {}) {
  const held = Array.from({ length: workers }, () => []);
  for (let n = 0; n < maxConns && held.some((h) => h.length < perWorker); n++) {
    const sock = net.connect(port, '127.0.0.1');
    await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
    await new Promise((resolve, reject) => {
      let buf = '';
      const onData = (d) => {
        buf += d.toString('latin1');
        if (/\r\n\r\n[\s\S]*\}$/.test(buf)) { sock.off('data', onData); resolve(); }
      };
      sock.on('data', onData);
      sock.once('error', reject);
      sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    });
    const me = `127.0.0.1:${sock.localPort}`;
    const worker = await probeWorker(access, me);
    if (held[worker].length < perWorker) held[worker].push({ sock, worker, client: me });
    else sock.destroy();
  }
  const counts = held.map((h) => h.length);
  assert.ok(counts.every((c) => c >= perWorker), `in ${maxConns} connections the workers got ${counts}`);
  return held.flat();
}

// The bytes of one HTTP/1.1 POST with a JSON body (a string is sent as it is).
function rawPost(p, body, extraHeaders = '') {
  const b = typeof body === 'string' ? body : JSON.stringify(body);
  return `POST ${p} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n${extraHeaders}\r\n${b}`;
}

// Sends `text` on an open socket and resolves with everything read until the peer closes it.
function sendUntilClose(sock, text) {
  return new Promise((resolve) => {
    let buf = '';
    sock.on('data', (d) => { buf += d.toString('latin1'); });
    sock.on('close', () => resolve(buf));
    sock.on('error', () => {});
    sock.write(text);
  });
}

// Splits a byte string of consecutive HTTP/1.1 responses (Content-Length or chunked) into
// [{status, headers, body}], in order; `rest` is what follows the last complete one.
function splitResponses(buf) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    const he = buf.indexOf('\r\n\r\n', i);
    if (he < 0) break;
    const lines = buf.slice(i, he).split('\r\n');
    const status = Number(lines[0].split(' ')[1]);
    const headers = {};
    for (const l of lines.slice(1)) { const k = l.indexOf(':'); headers[l.slice(0, k).toLowerCase()] = l.slice(k + 1).trim(); }
    let j = he + 4;
    let body = '';
    if (/chunked/i.test(headers['transfer-encoding'] || '')) {
      for (;;) {
        const le = buf.indexOf('\r\n', j);
        if (le < 0) return { responses: out, rest: buf.slice(i) };
        const size = parseInt(buf.slice(j, le), 16);
        if (le + 2 + size + 2 > buf.length) return { responses: out, rest: buf.slice(i) };
        j = le + 2;
        if (size === 0) { j += 2; break; }
        body += buf.slice(j, j + size);
        j += size + 2;
      }
    } else {
      const len = Number(headers['content-length'] || 0);
      body = buf.slice(j, j + len);
      j += len;
    }
    out.push({ status, headers, body: Buffer.from(body, 'latin1').toString('utf8') });
    i = j;
  }
  return { responses: out, rest: buf.slice(i) };
}

// A test CA and a server certificate for 127.0.0.1 and localhost, made with the openssl command.
function makeCerts(dir) {
  const { execFileSync } = require('node:child_process');
  const o = (args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2',
    '-subj', '/CN=carpool e2e test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  o(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=carpool-test']);
  fs.writeFileSync(path.join(dir, 'ext.cnf'),
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' +
    'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  o(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };
}

function curl(args, input) {
  return new Promise((resolve) => {
    const p = spawn('curl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => resolve({ code, out, err }));
    if (input) p.stdin.end(input); else p.stdin.end();
  });
}

// A fake upstream: every POST is answered by answer(rawBody) -> {status, headers, body} and its body
// kept in `seen`; anything else gets 404.
async function postUpstream(answer) {
  const seen = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      if (req.method !== 'POST') {
        res.writeHead(404, { 'Content-Type': 'application/json' });
        res.end('{"error":{"message":"not here","type":"invalid_request_error"}}');
        return;
      }
      seen.push(body);
      const out = answer(body);
      res.writeHead(out.status, { ...out.headers, 'Content-Length': Buffer.byteLength(out.body) });
      res.end(out.body);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { srv, seen, url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }) };
}

module.exports = {
  postUpstream, test, TEST_TIMEOUT_MS, ROOT, BIN, startSim, startCarpool, baseConfig, request, readyz, freePort, parseSse, collect, curl,
  toYaml, tmpdir, assertCleanLog, assertEmbeddings, probeWorker, connectOnWorkers, rawPost, sendUntilClose, splitResponses,
  agent, makeCerts,
};
