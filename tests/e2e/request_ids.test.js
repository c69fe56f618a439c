// Request ids, trace context and the headers a reverse proxy adds (issue 11, items 7 and 8): every
// answer carries X-Request-Id and Date, error bodies name the id, a pass-through call carries the
// client's id, traceparent/tracestate and X-Forwarded-*, a batched call carries its batch's id, and
// the access log joins them all (request id, trace id, batch, key name, upstream) without a key.
'use strict';
const assert = require('node:assert/strict');
const { test, startSim, startCarpool, baseConfig, request } = require('./lib');

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const tp = (span) => `00-${TRACE}-${span}-01`;
const KEYS = ['sk-rid-named-1', 'sk-rid-anon-2'];
const IMF = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/;

async function start(t) {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '2']);
  const cfg = baseConfig(sim, {
    batching: { max_wait_ms: 150 },
    auth: { clients: [{ key: KEYS[0], name: 'team-a' }, { key: KEYS[1] }] },
  });
  cfg.log.access = 'stdout';
  const cp = await startCarpool(cfg);
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const access = () => cp.log().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return { sim, cp, access };
}

const auth = (i, more = {}) => ({ Authorization: `Bearer ${KEYS[i]}`, ...more });

test('batched completions: ids returned, the call carries the batch id, the access log joins both', async (t) => {
  const { sim, cp, access } = await start(t);
  const body = (p) => ({ model: 'm', prompt: p, max_tokens: 3 });
  const [a, b] = await Promise.all([
    request(cp.port, 'POST', '/v1/completions', body('rid one'), auth(0, { 'X-Request-Id': 'client-id_1.a:b', traceparent: tp('00f067aa0ba902b7') })),
    request(cp.port, 'POST', '/v1/completions', body('rid two'), auth(1, { 'X-Request-Id': 'bad id"with<junk>' })),
  ]);
  assert.equal(a.status, 200, a.body);
  assert.equal(b.status, 200, b.body);
  assert.equal(a.headers['x-request-id'], 'client-id_1.a:b');
  assert.match(b.headers['x-request-id'], /^[0-9a-f]{32}$/, 'an unsafe id is replaced by a made one');
  for (const r of [a, b]) assert.match(r.headers.date, IMF);
  const batch = Number(a.headers['x-carpool-batch'].split(';')[0]);
  assert.equal(Number(b.headers['x-carpool-batch'].split(';')[0]), batch, 'one batch');
  const calls = (await sim.stats()).requests.filter((e) => e.path === '/v1/completions');
  assert.equal(calls.length, 1);
  assert.equal(calls[0]['x-request-id'], `carpool-batch-${batch}`);
  assert.equal(calls[0].traceparent, undefined, 'a batched call is no one client\'s span');
  await new Promise((r) => setTimeout(r, 100));
  const lines = access().filter((l) => l.route === '/v1/completions');
  const la = lines.find((l) => l.request_id === 'client-id_1.a:b');
  const lb = lines.find((l) => l.request_id === b.headers['x-request-id']);
  assert.ok(la && lb, cp.log());
  assert.equal(la.batch, batch);
  assert.equal(lb.batch, batch);
  assert.equal(la.trace_id, TRACE);
  assert.equal(lb.trace_id, undefined);
  assert.equal(la.key, 'team-a');
  assert.equal(lb.key, 'key#2');
  for (const k of KEYS) assert.ok(!cp.log().includes(k), 'no key material in any log');
});

test('pass-through: the client id, trace context and X-Forwarded-* go upstream; the log names the upstream', async (t) => {
  const { sim, cp, access } = await start(t);
  const chat = { model: 'm', messages: [{ role: 'user', content: 'rid chat' }], max_tokens: 3 };
  const r = await request(cp.port, 'POST', '/v1/chat/completions', chat,
    auth(0, { 'X-Request-Id': 'chat-1', traceparent: tp('b7ad6b7169203331'), tracestate: 'congo=t61rcWkgMzE', 'X-Forwarded-For': '203.0.113.7' }));
  assert.equal(r.status, 200, r.body);
  assert.equal(r.headers['x-request-id'], 'chat-1', 'one X-Request-Id, carpool\'s');
  assert.match(r.headers.date, IMF);
  const made = await request(cp.port, 'POST', '/v1/chat/completions', chat, auth(1));
  assert.equal(made.status, 200, made.body);
  const calls = (await sim.stats()).requests.filter((e) => e.path === '/v1/chat/completions');
  assert.equal(calls.length, 2);
  assert.equal(calls[0]['x-request-id'], 'chat-1');
  assert.equal(calls[0].traceparent, tp('b7ad6b7169203331'));
  assert.equal(calls[0].tracestate, 'congo=t61rcWkgMzE');
  assert.equal(calls[0]['x-forwarded-for'], '203.0.113.7, 127.0.0.1');
  assert.equal(calls[0]['x-forwarded-proto'], 'http');
  assert.equal(calls[1]['x-request-id'], made.headers['x-request-id'], 'a made id goes upstream too');
  assert.equal(calls[1]['x-forwarded-for'], '127.0.0.1');
  await new Promise((r) => setTimeout(r, 100));
  const line = access().find((l) => l.request_id === 'chat-1');
  assert.ok(line, cp.log());
  assert.equal(line.trace_id, TRACE);
  assert.equal(line.upstream, sim.url);
  assert.equal(line.key, 'team-a');
});

test('carpool\'s own errors: X-Request-Id, Date and request_id beside error', async (t) => {
  const { cp, access } = await start(t);
  const bad = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'x' }, { Authorization: 'Bearer nope', 'X-Request-Id': 'err-1' });
  assert.equal(bad.status, 401, bad.body);
  assert.equal(bad.headers['x-request-id'], 'err-1');
  assert.match(bad.headers.date, IMF);
  const j = JSON.parse(bad.body);
  assert.equal(j.request_id, 'err-1');
  assert.equal(j.error.code, 'invalid_api_key');
  const local = await request(cp.port, 'GET', '/healthz');
  assert.match(local.headers['x-request-id'], /^[0-9a-f]{32}$/);
  assert.match(local.headers.date, IMF);
  await new Promise((r) => setTimeout(r, 100));
  const line = access().find((l) => l.request_id === 'err-1');
  assert.ok(line, cp.log());
  assert.equal(line.status, 401);
  assert.equal(line.key, undefined, 'no key was accepted');
});
