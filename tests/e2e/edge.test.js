// The client-facing edge (issue 9): strict HTTP/1.1 framing, bounded parser states, the early key
// check, the head and body deadlines, and dot segments - raw bytes on real sockets against the real
// binary, with a recording upstream that must never see what carpool refuses.
'use strict';
const { before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { test, startCarpool, curl } = require('./lib');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const KEY = 'sk-edge-test';

// An upstream under a path prefix that records every byte it receives and answers every request
// with a small JSON naming the path it got.
async function recordingUpstream() {
  const state = { raw: '', paths: [] };
  const srv = net.createServer((sock) => {
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      state.raw += d.toString('latin1');
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const m = head.match(/content-length:\s*(\d+)/i);
        const len = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + len) return;
        buf = buf.subarray(end + 4 + len);
        const p = head.split(' ')[1];
        state.paths.push(p);
        const j = JSON.stringify({ object: 'list', data: [], path: p });
        sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${j.length}\r\n\r\n${j}`);
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { state, url: `http://127.0.0.1:${srv.address().port}/pfx`, close: () => new Promise((r) => srv.close(r)) };
}

// Writes each piece (a gap of gapMs between pieces) and collects what carpool answers until it
// closes its side or timeoutMs passes. closed: carpool ended the connection.
function exchange(port, pieces, { timeoutMs = 5000, gapMs = 0 } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    let data = '';
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ text: data, closed, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (d) => { data += d.toString('latin1'); });
    s.on('end', () => finish(true));
    s.on('close', () => finish(true));
    s.on('error', () => {});
    s.on('connect', async () => {
      for (const p of typeof pieces === 'string' ? [pieces] : pieces) {
        if (done || s.destroyed) return;
        s.write(p);
        if (gapMs) await sleep(gapMs);
      }
    });
  });
}

function statuses(text) {
  return (text.match(/HTTP\/1\.1 (\d{3})/g) || []).map((x) => Number(x.slice(9)));
}

let up;
let cp;

before(async () => {
  up = await recordingUpstream();
  cp = await startCarpool({
    workers: 1,
    listen: [{ address: '127.0.0.1:0' }],
    upstreams: [{ url: up.url, dialect: 'openai' }],
    auth: { keys: [KEY] },
    limits: { max_body_bytes: 65536, max_header_bytes: 4096 },
    timeouts: { client_header_ms: 1500, client_body_ms: 1500, client_idle_ms: 60000 },
    log: { level: 'info' },
  });
});

after(async () => {
  try {
    if (cp) await cp.stop();
  } finally {
    if (up) await up.close();
  }
});

const A = `Authorization: Bearer ${KEY}\r\n`;

// Each of these is refused with 400 (or 501 where named) and the connection closes; none reaches the
// upstream. The path of each names it, so that the upstream's record can be searched.
const REFUSED = [
  // defect 3: smuggling vectors (RFC 9112 sections 2.2, 5)
  ['a space before the colon of Transfer-Encoding', `POST /smuggle-1 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`],
  ['a space before the colon of Content-Length', `POST /smuggle-2 HTTP/1.1\r\nHost: a\r\n${A}Content-Length : 5\r\n\r\nhello`],
  ['an obs-fold line that carries a header name', `GET /smuggle-3 HTTP/1.1\r\nHost: a\r\n${A}X-A: b\r\n Transfer-Encoding: chunked\r\n\r\n`],
  ['a bare CR in a header value', `GET /smuggle-4 HTTP/1.1\r\nHost: a\r\n${A}X-A: b\rTransfer-Encoding: chunked\r\n\r\n`],
  ['a bare CR in the request target', `GET /smuggle-5\rx HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
  ['a control byte in the request target', `GET /smuggle-6\x01x HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
  ['a header name with a space', `GET /smuggle-7 HTTP/1.1\r\nHost: a\r\n${A}X A: b\r\n\r\n`],
  // defect 6: conflicting framing (section 6.3)
  ['Content-Length with Transfer-Encoding', `POST /smuggle-8 HTTP/1.1\r\nHost: a\r\n${A}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
  ['two Content-Length values (equal)', `POST /smuggle-9 HTTP/1.1\r\nHost: a\r\n${A}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello`],
  ['a second Transfer-Encoding', `POST /smuggle-10 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`],
  ['Content-Length: +5', `POST /smuggle-11 HTTP/1.1\r\nHost: a\r\n${A}Content-Length: +5\r\n\r\nhello`],
  ['two Host headers', `GET /smuggle-12 HTTP/1.1\r\nHost: a\r\nHost: b\r\n${A}\r\n`],
  ['chunk size 0x5', `POST /smuggle-13 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n`],
  ['chunk size -0', `POST /smuggle-14 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n-0\r\n\r\n`],
  ['chunk size with a leading space', `POST /smuggle-15 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n`],
  ['bytes between chunk data and its CRLF', `POST /smuggle-16 HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n`],
  // defect 8: NUL in a header value (also in Authorization), a method that is not a token
  ['a NUL in a header value', `GET /smuggle-17 HTTP/1.1\r\nHost: a\r\n${A}X-A: b\x00c\r\n\r\n`],
  ['a NUL in Authorization', `GET /smuggle-18 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${KEY}\x00junk\r\n\r\n`],
  ['a method that is not a token', `G@T /smuggle-19 HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
  ['an unknown method (501)', `BREW /smuggle-20 HTTP/1.1\r\nHost: a\r\n${A}\r\n`, 501],
  // defect 7: dot segments above the prefix, plain and percent-encoded
  ['/../ above the root', `GET /../smuggle-21 HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
  ['%2e%2e above the root', `GET /v1/%2e%2e/%2E%2e/smuggle-22 HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
  ['an encoded slash', `GET /v1/..%2fsmuggle-23 HTTP/1.1\r\nHost: a\r\n${A}\r\n`],
];

for (const [name, bytes, status = 400] of REFUSED) {
  test(`refused with ${status} and closed: ${name}`, async () => {
    const r = await exchange(cp.port, bytes);
    assert.deepEqual(statuses(r.text), [status], r.text);
    assert.match(r.text, /Connection: close/);
    assert.match(r.text, /"error":\{"message":/);
    assert.ok(r.closed, 'carpool kept the connection open');
  });
}

test('a keep-alive connection is refused mid-stream: what follows the bad request is never read', async () => {
  const r = await exchange(cp.port,
    `POST /smuggle-30 HTTP/1.1\r\nHost: a\r\n${A}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n` +
    `0\r\n\r\nGET /smuggle-31 HTTP/1.1\r\nHost: a\r\n${A}\r\n`);
  assert.deepEqual(statuses(r.text), [400], r.text);
  assert.ok(r.closed);
});

test('valid requests still pass, keep-alive and chunked, with the path under the prefix', async () => {
  const body = '{"model":"m"}';
  const r = await exchange(cp.port, [
    `GET /v1/models HTTP/1.1\r\nHost: a\r\n${A}\r\n`,
    `POST /v1/files HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n` +
      `3;ext=1\r\n${body.slice(0, 3)}\r\n${(body.length - 3).toString(16)}\r\n${body.slice(3)}\r\n0\r\nX-Trailer: t\r\n\r\n`,
    `GET /v1/./models/../models HTTP/1.1\r\nHost: a\r\n${A}Connection: close\r\n\r\n`,
  ], { gapMs: 200 });
  assert.deepEqual(statuses(r.text), [200, 200, 200], r.text);
  assert.ok(r.closed);
  assert.match(r.text, /"path":"\/pfx\/v1\/models"[\s\S]*"path":"\/pfx\/v1\/files"[\s\S]*"path":"\/pfx\/v1\/models"/);
});

// defect 8: the smaller ones
test('headers named in Connection are not forwarded', async () => {
  const r = await exchange(cp.port,
    `GET /v1/models HTTP/1.1\r\nHost: a\r\n${A}Connection: close, X-Hop\r\nX-Hop: hop-secret\r\nX-End: kept\r\n\r\n`);
  assert.deepEqual(statuses(r.text), [200], r.text);
  assert.ok(!up.state.raw.includes('hop-secret'), 'a header named in Connection went upstream');
  assert.ok(up.state.raw.includes('X-End: kept'));
});

for (const [name, body] of [
  ['trailing bytes after the JSON object', '{"model":"m","prompt":"a"}{"model":"m","prompt":"b"}'],
  ['invalid UTF-8', '{"model":"m","prompt":"\xff\xfe"}'],
]) {
  test(`a completion body with ${name}: 400 before batching`, async () => {
    const b = Buffer.from(body, 'latin1');
    const r = await exchange(cp.port, [Buffer.concat([Buffer.from(
      `POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Content-Type: application/json\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n`), b])]);
    assert.deepEqual(statuses(r.text), [400], r.text);
    assert.match(r.text, /could not parse the JSON body/);
  });
}

test('/v1//completions is /v1/completions: validated (and batched), not passed through', async () => {
  const r = await exchange(cp.port,
    `POST /v1//completions HTTP/1.1\r\nHost: a\r\n${A}Content-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{"model":"m"}`);
  assert.deepEqual(statuses(r.text), [400], r.text);
  assert.match(r.text, /"param":"prompt"/);
});

test('a second instance on the same unix socket path refuses to start; the first keeps serving', async () => {
  const sock = require('node:path').join(cp.dir, 'edge.sock');
  const cfg = {
    workers: 1,
    listen: [{ address: '127.0.0.1:0' }, { address: `unix:${sock}` }],
    upstreams: [{ url: up.url, dialect: 'openai' }],
    log: { level: 'info' },
  };
  const first = await startCarpool(cfg);
  try {
    const second = await startCarpool(cfg, { expectFail: true });
    assert.notEqual(second.code, 0);
    assert.match(second.log(), /in use by a running process/);
    const h = await curl(['-s', '--unix-socket', sock, 'http://x/healthz']);
    assert.equal(h.code, 0, h.err);
    assert.match(h.out, /"ok"/);
  } finally {
    await first.stop();
  }
  // a stale socket file (bound, then its process gone; nobody answers) is replaced
  require('node:child_process').execFileSync('python3', ['-c',
    'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', sock]);
  assert.ok(require('node:fs').statSync(sock).isSocket());
  const third = await startCarpool(cfg);
  const h = await curl(['-s', '--unix-socket', sock, 'http://x/healthz']);
  assert.match(h.out, /"ok"/);
  await third.stop();
});

test('serve: api / ops keeps /metrics, /healthz and /readyz off the public listener', async () => {
  const two = await startCarpool({
    workers: 1,
    listen: [{ address: '127.0.0.1:0', serve: 'api' }, { address: '127.0.0.1:0', serve: 'ops' }],
    upstreams: [{ url: up.url, dialect: 'openai' }],
    auth: { keys: [KEY] },
    log: { level: 'info' },
  });
  try {
    const ports = [...two.log().matchAll(/listening on 127\.0\.0\.1:(\d+)/g)].map((m) => Number(m[1]));
    assert.equal(ports.length, 2);
    const get = async (port, p) => statuses((await exchange(port, `GET ${p} HTTP/1.1\r\nHost: a\r\n${A}Connection: close\r\n\r\n`)).text)[0];
    assert.equal(await get(ports[0], '/metrics'), 404);
    assert.equal(await get(ports[0], '/healthz'), 404);
    assert.equal(await get(ports[0], '/v1/models'), 200);
    assert.equal(await get(ports[1], '/metrics'), 200);
    assert.equal(await get(ports[1], '/readyz'), 200);
    assert.equal(await get(ports[1], '/v1/models'), 404);
  } finally {
    await two.stop();
  }
});

test('nothing refused ever reached the upstream', () => {
  assert.ok(!up.state.raw.includes('smuggle'), up.state.raw.slice(-2000));
  assert.ok(!up.state.raw.includes('admin'));
  for (const p of up.state.paths) assert.ok(p.startsWith('/pfx/'), p);
});

// defect 2: every parser state is bounded - an unending line gets an answer at its bound, at once
test('a chunk-end line that never ends is refused at its first wrong byte', async () => {
  const r = await exchange(cp.port, [
    `POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n5\r\nhello`,
    'A'.repeat(256 * 1024), 'A'.repeat(256 * 1024)]);
  assert.deepEqual(statuses(r.text), [400], r.text);
  assert.ok(r.closed);
});

test('a chunk-size line that never ends is refused at its bound', async () => {
  const r = await exchange(cp.port, [
    `POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n5;x=`,
    'a'.repeat(64 * 1024), 'a'.repeat(64 * 1024)]);
  assert.deepEqual(statuses(r.text), [400], r.text);
  assert.ok(r.closed);
});

test('trailers that never end count against max_header_bytes: 431', async () => {
  const r = await exchange(cp.port, [
    `POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: `,
    'a'.repeat(64 * 1024), 'a'.repeat(64 * 1024)]);
  assert.deepEqual(statuses(r.text), [431], r.text);
  assert.ok(r.closed);
});

test('chunked bodies count against max_body_bytes as they come: 413 before the rest is sent', async () => {
  const r = await exchange(cp.port, [
    `POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Transfer-Encoding: chunked\r\n\r\n`,
    `8000\r\n${'x'.repeat(0x8000)}\r\n8000\r\n${'x'.repeat(0x8000)}\r\n`, `8000\r\n${'x'.repeat(0x8000)}\r\n`]);
  assert.deepEqual(statuses(r.text), [413], r.text);
  assert.ok(r.closed);
});

test('an invalid key is refused as soon as the head is read, before any body byte', async () => {
  const r = await exchange(cp.port,
    'POST /v1/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\n' +
    'Content-Length: 60000\r\n\r\n', { timeoutMs: 1000 });
  assert.deepEqual(statuses(r.text), [401], r.text);
  assert.match(r.text, /invalid_api_key/);
  assert.ok(r.closed, 'carpool waited for the body');
});

test('Expect: 100-continue with an invalid key: 401, no 100 Continue', async () => {
  const r = await exchange(cp.port,
    'POST /v1/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong\r\nExpect: 100-continue\r\n' +
    'Content-Length: 60000\r\n\r\n', { timeoutMs: 1000 });
  assert.deepEqual(statuses(r.text), [401], r.text);
});

// defect 5: deadlines for the whole head and the whole body, whatever the trickle
test('slowloris head: a byte every 100 ms gets 408 at client_header_ms (1.5 s), though never idle', async () => {
  const head = `GET /v1/models HTTP/1.1\r\nHost: a\r\n${A}X-Pad: ${'p'.repeat(200)}\r\n\r\n`;
  const r = await exchange(cp.port, head.split(''), { gapMs: 100, timeoutMs: 10000 });
  assert.deepEqual(statuses(r.text), [408], r.text);
  assert.ok(r.closed);
  assert.ok(r.ms >= 1400 && r.ms < 6000, `closed after ${r.ms} ms`);
});

test('slow body: a byte every 100 ms gets 408 at client_body_ms (1.5 s)', async () => {
  const body = JSON.stringify({ model: 'm', prompt: 'x'.repeat(100) });
  const r = await exchange(cp.port,
    [`POST /v1/completions HTTP/1.1\r\nHost: a\r\n${A}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      ...body.split('')], { gapMs: 100, timeoutMs: 10000 });
  assert.deepEqual(statuses(r.text), [408], r.text);
  assert.ok(r.closed);
  assert.ok(r.ms >= 1400 && r.ms < 6000, `closed after ${r.ms} ms`);
});

test('a keep-alive connection idle between requests is not cut by the head deadline', async () => {
  const r = await exchange(cp.port, [
    `GET /v1/models HTTP/1.1\r\nHost: a\r\n${A}\r\n`, '',
    `GET /v1/models HTTP/1.1\r\nHost: a\r\n${A}Connection: close\r\n\r\n`], { gapMs: 1200, timeoutMs: 10000 });
  assert.deepEqual(statuses(r.text), [200, 200], r.text);
});
