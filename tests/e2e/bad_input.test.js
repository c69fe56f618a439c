// Bad client input: every malformed request gets the right 4xx and an OpenAI-style error body,
// and carpool keeps serving everyone else.
'use strict';
const { before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, curl } = require('./lib');
const { expected } = require('./simgen');

let sim;
let cp;

before(async () => {
  sim = await startSim(['--step-ms', '2']);
  cp = await startCarpool(baseConfig(sim, {
    limits: { max_body_bytes: 2048, max_header_bytes: 1024 },
  }));
});

after(async () => {
  try {
    if (cp) await cp.stop();
  } finally {
    if (sim) await sim.kill();
  }
});

// A request on its own connection (refusals close the connection).
function oneShot(method, p, body, headers = {}) {
  const agent = new http.Agent({ keepAlive: false });
  return request(cp.port, method, p, body, headers, { agent, timeoutMs: 5000 }).finally(() => agent.destroy());
}

// Asserts an OpenAI-style error response, field by field.
function assertError(r, status, { param } = {}) {
  assert.equal(r.status, status, `status: ${r.status} body: ${r.body}`);
  assert.match(String(r.headers['content-type']), /^application\/json/);
  let j;
  assert.doesNotThrow(() => { j = JSON.parse(r.body); }, `body is not JSON: ${r.body}`);
  assert.equal(typeof j, 'object');
  assert.ok(j.error && typeof j.error === 'object' && !Array.isArray(j.error), `no error object: ${r.body}`);
  assert.equal(typeof j.error.message, 'string');
  assert.ok(j.error.message.length > 0, 'empty error message');
  assert.equal(typeof j.error.type, 'string');
  assert.ok(j.error.type.length > 0, 'empty error type');
  assert.ok('param' in j.error, `param missing: ${r.body}`);
  assert.ok(j.error.param === null || typeof j.error.param === 'string', 'param must be a string or null');
  assert.ok('code' in j.error, `code missing: ${r.body}`);
  assert.ok(j.error.code === null || typeof j.error.code === 'string' || typeof j.error.code === 'number');
  if (param !== undefined) assert.equal(j.error.param, param);
  return j;
}

let uniq = 0;
function prompt(tag) {
  uniq++;
  return `bad-input ${tag} #${uniq} ${process.pid}`;
}

// A valid streaming request; checks that the client got exactly its own tokens.
async function validStream(tag, maxTokens = 8) {
  const p = prompt(tag);
  const r = await request(cp.port, 'POST', '/v1/completions',
    { model: 'sim-model', prompt: p, max_tokens: maxTokens, stream: true }, {}, { timeoutMs: 10000 });
  assert.equal(r.status, 200, r.body);
  assert.match(String(r.headers['content-type']), /^text\/event-stream/);
  const out = collect(parseSse(r.body));
  const want = expected(p, { maxTokens });
  assert.equal(out.errors.length, 0, r.body);
  assert.equal(out.done, 1, r.body);
  assert.deepEqual(Object.keys(out.text), ['0']);
  assert.equal(out.text[0], want.text, `prompt ${p}`);
  assert.equal(out.finish[0], want.finish_reason);
}

async function stillServes() {
  await validStream('after');
  const p = prompt('after-json');
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: p, max_tokens: 5 });
  assert.equal(r.status, 200, r.body);
  const j = JSON.parse(r.body);
  assert.equal(j.choices.length, 1);
  assert.equal(j.choices[0].text, expected(p, { maxTokens: 5 }).text);
}

const BODY_CASES = [
  { name: 'invalid JSON', body: '{"prompt": "x", ', status: 400 },
  { name: 'truncated JSON string', body: '{"prompt": "abc', status: 400 },
  { name: 'body is a JSON array', body: '["a","b"]', status: 400 },
  { name: 'body is a JSON number', body: '42', status: 400 },
  { name: 'body is a JSON string', body: '"hello"', status: 400 },
  { name: 'empty body', body: '', status: 400 },
  { name: 'missing prompt', body: { model: 'sim-model', max_tokens: 3 }, status: 400, param: 'prompt' },
  { name: 'prompt is a number', body: { model: 'sim-model', prompt: 7 }, status: 400, param: 'prompt' },
  { name: 'prompt is null', body: { model: 'sim-model', prompt: null }, status: 400, param: 'prompt' },
  { name: 'prompt is an object', body: { model: 'sim-model', prompt: { a: 1 } }, status: 400, param: 'prompt' },
  { name: 'prompt []', body: { model: 'sim-model', prompt: [] }, status: 400, param: 'prompt' },
  { name: 'prompt [[]]', body: { model: 'sim-model', prompt: [[]] }, status: 400, param: 'prompt' },
  { name: 'prompt mixed ["a",[1,2]]', body: { model: 'sim-model', prompt: ['a', [1, 2]] }, status: 400, param: 'prompt' },
  { name: 'prompt [1.5]', body: { model: 'sim-model', prompt: [1.5] }, status: 400, param: 'prompt' },
  { name: 'n = 0', body: { model: 'sim-model', prompt: 'x', n: 0 }, status: 400, param: 'n' },
  { name: 'n = "2"', body: { model: 'sim-model', prompt: 'x', n: '2' }, status: 400, param: 'n' },
  { name: 'n = 1.5', body: { model: 'sim-model', prompt: 'x', n: 1.5 }, status: 400, param: 'n' },
  { name: 'stream = "yes"', body: { model: 'sim-model', prompt: 'x', stream: 'yes' }, status: 400, param: 'stream' },
  { name: 'stream = 1', body: { model: 'sim-model', prompt: 'x', stream: 1 }, status: 400, param: 'stream' },
];

for (const c of BODY_CASES) {
  test(`bad body: ${c.name} -> ${c.status}`, async () => {
    const body = typeof c.body === 'string' ? c.body : JSON.stringify(c.body);
    const r = await request(cp.port, 'POST', '/v1/completions', body, {}, { timeoutMs: 5000 });
    assertError(r, c.status, { param: c.param });
  });
}

test('after the bad bodies, a valid request succeeds', async () => {
  await stillServes();
});

test('body over max_body_bytes with Content-Length -> 413', async () => {
  const big = JSON.stringify({ model: 'sim-model', prompt: 'x'.repeat(5000 - 40) });
  assert.ok(big.length >= 5000 - 10 && big.length > 2048);
  const r = await oneShot('POST', '/v1/completions', big);
  assertError(r, 413);
  await stillServes();
});

test('body over max_body_bytes with Transfer-Encoding: chunked (curl) -> 413', async () => {
  const big = JSON.stringify({ model: 'sim-model', prompt: 'y'.repeat(5000 - 40) });
  const res = await curl(['-sS', '-m', '10', '-o', '-', '-w', '\n%{http_code}\n',
    '-H', 'Content-Type: application/json', '-H', 'Transfer-Encoding: chunked',
    '--data-binary', '@-', `${cp.url}/v1/completions`], big);
  // curl may see the connection closed while it still uploads; the answer must have arrived first.
  const lines = res.out.trimEnd().split('\n');
  const status = Number(lines.pop());
  const body = lines.join('\n');
  assert.equal(status, 413, `curl exit ${res.code} (${res.err.trim()}), status ${status}, body ${body}`);
  assertError({ status, headers: { 'content-type': 'application/json' }, body }, 413);
  await stillServes();
});

test('a body just under the limit is accepted', async () => {
  const p = prompt('near-limit') + ' ' + 'z'.repeat(1800);
  const body = JSON.stringify({ model: 'sim-model', prompt: p, max_tokens: 4 });
  assert.ok(body.length < 2048);
  const r = await request(cp.port, 'POST', '/v1/completions', body);
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).choices[0].text, expected(p, { maxTokens: 4 }).text);
});

test('GET /v1/completions -> 405 with an Allow header', async () => {
  const r = await request(cp.port, 'GET', '/v1/completions');
  assertError(r, 405);
  assert.ok(r.headers.allow, 'no Allow header');
  assert.match(r.headers.allow, /\bPOST\b/);
  await stillServes();
});

test('GET /v1/completions with Connection: close on a fresh connection (curl) -> 405, answer not lost', async () => {
  for (let i = 0; i < 5; i++) {
    const res = await curl(['-sS', '-m', '5', '-o', '-', '-w', '\n%{http_code}\n', '-H', 'Connection: close',
      `${cp.url}/v1/completions`]);
    assert.equal(res.code, 0, `curl exit ${res.code}: ${res.err}`);
    const lines = res.out.trimEnd().split('\n');
    const status = Number(lines.pop());
    assertError({ status, headers: { 'content-type': 'application/json' }, body: lines.join('\n') }, 405);
  }
  await stillServes();
});

test('headers over max_header_bytes -> 431', async () => {
  const r = await oneShot('POST', '/v1/completions', JSON.stringify({ prompt: 'x' }), { 'X-Big': 'h'.repeat(4000) });
  assertError(r, 431);
  await stillServes();
});

test('many headers together over max_header_bytes -> 431', async () => {
  const hdrs = {};
  for (let i = 0; i < 40; i++) hdrs[`X-H${i}`] = 'v'.repeat(40);
  const r = await oneShot('POST', '/v1/completions', JSON.stringify({ prompt: 'x' }), hdrs);
  assertError(r, 431);
  await stillServes();
});

function rawExchange(payload, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(cp.port, '127.0.0.1');
    let buf = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`raw socket: no close within ${timeoutMs} ms: ${buf}`)); }, timeoutMs);
    s.on('connect', () => s.write(payload));
    s.on('data', (d) => { buf += d; });
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve(buf); });
  });
}

function parseRawResponse(raw) {
  const i = raw.indexOf('\r\n\r\n');
  assert.ok(i > 0, `no HTTP head in ${JSON.stringify(raw)}`);
  const head = raw.slice(0, i).split('\r\n');
  const m = head[0].match(/^HTTP\/1\.[01] (\d{3}) /);
  assert.ok(m, `bad status line ${head[0]}`);
  const headers = {};
  for (const h of head.slice(1)) {
    const k = h.indexOf(':');
    headers[h.slice(0, k).toLowerCase()] = h.slice(k + 1).trim();
  }
  return { status: Number(m[1]), headers, body: raw.slice(i + 4) };
}

test('garbage that is not HTTP on a raw socket -> 400, and carpool survives', async () => {
  const raw = await rawExchange('HELLO\r\n\r\n');
  const r = parseRawResponse(raw);
  if (r.headers['content-length']) r.body = r.body.slice(0, Number(r.headers['content-length']));
  assertError(r, 400);
  const raw2 = await rawExchange(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x00, 0x0d, 0x0a, 0x0d, 0x0a]));
  // a TLS-looking binary blob: either a 400 or a plain close, but never a crash
  if (raw2.length) assert.match(raw2, /^HTTP\/1\.[01] 4\d\d /);
  await stillServes();
});

test('50 bad requests concurrent with 20 valid streams: every one gets its own answer', async () => {
  const bads = [
    { body: '{"prompt": ', status: 400 },
    { body: '[1,2,3]', status: 400 },
    { body: JSON.stringify({ model: 'sim-model' }), status: 400 },
    { body: JSON.stringify({ model: 'sim-model', prompt: [] }), status: 400 },
    { body: JSON.stringify({ model: 'sim-model', prompt: ['a', [1]] }), status: 400 },
    { body: JSON.stringify({ model: 'sim-model', prompt: 'x', n: 0 }), status: 400 },
    { body: JSON.stringify({ model: 'sim-model', prompt: 'x', stream: 'yes' }), status: 400 },
    { body: JSON.stringify({ model: 'sim-model', prompt: 'x'.repeat(3000) }), status: 413, oneShot: true },
    { method: 'GET', status: 405 },
    { body: JSON.stringify({ prompt: 'x' }), headers: { 'X-Big': 'q'.repeat(2000) }, status: 431, oneShot: true },
  ];
  const jobs = [];
  for (let i = 0; i < 20; i++) {
    jobs.push((async () => {
      const p = prompt(`concurrent-valid-${i}`);
      const r = await request(cp.port, 'POST', '/v1/completions',
        { model: 'sim-model', prompt: p, max_tokens: 12, stream: true }, {}, { timeoutMs: 15000 });
      assert.equal(r.status, 200, r.body);
      const out = collect(parseSse(r.body));
      const want = expected(p, { maxTokens: 12 });
      assert.equal(out.errors.length, 0);
      assert.equal(out.done, 1);
      assert.deepEqual(Object.keys(out.text), ['0']);
      assert.equal(out.text[0], want.text, `client ${i} got another text`);
      assert.equal(out.finish[0], want.finish_reason);
    })());
  }
  for (let i = 0; i < 50; i++) {
    const b = bads[i % bads.length];
    jobs.push((async () => {
      const method = b.method || 'POST';
      const r = b.oneShot
        ? await oneShot(method, '/v1/completions', b.body, b.headers)
        : await request(cp.port, method, '/v1/completions', b.body, b.headers || {}, { timeoutMs: 15000 });
      assertError(r, b.status);
    })());
  }
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((x) => x.status === 'rejected');
  assert.equal(failed.length, 0, failed.map((f) => f.reason && f.reason.stack).join('\n---\n'));
  await stillServes();
});
