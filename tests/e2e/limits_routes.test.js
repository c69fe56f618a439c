// What a client is told at the limits: a key's request budget is the token bucket the README and the
// man page describe (rpm/60 a second, at most 10 s of budget, then 429 with Retry-After), and a model
// that no upstream serves gets one answer on every route.
'use strict';
const assert = require('node:assert/strict');
const { test, startSim, startCarpool, baseConfig, request } = require('./lib');

const bearer = (k) => ({ Authorization: `Bearer ${k}` });

test('limits: rpm=60 lets an idle key send 10 at once, the 11th gets 429 with Retry-After 1..2; rpm=2 allows no burst', async (t) => {
  const sim = await startSim(['--step-ms', '1']);
  const cp = await startCarpool(baseConfig(sim, {
    auth: { clients: [{ key: 'sk-sixty', rate_limit_rpm: 60 }, { key: 'sk-two', rate_limit_rpm: 2 }] },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const one = (k, i) => request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `limit ${k} ${i}`, max_tokens: 1 }, bearer(k));
  const rs = await Promise.all(Array.from({ length: 11 }, (_, i) => one('sk-sixty', i)));
  const statuses = rs.map((x) => x.status).sort();
  assert.deepEqual(statuses, [...Array(10).fill(200), 429], `a burst of 11 from an idle key: ${statuses}`);
  const r = rs.find((x) => x.status === 429);
  assert.equal(r.status, 429, r.body);
  const ra = Number(r.headers['retry-after']);
  assert.ok(ra >= 1 && ra <= 2, `Retry-After ${ra}`);
  assert.equal(JSON.parse(r.body).error.code, 'rate_limit_exceeded');
  assert.equal((await one('sk-two', 0)).status, 200);
  const r2 = await one('sk-two', 1);
  assert.equal(r2.status, 429, 'rpm=2 allows one request, then waits 30 s');
  assert.ok(Number(r2.headers['retry-after']) >= 29 && Number(r2.headers['retry-after']) <= 31, `Retry-After ${r2.headers['retry-after']}`);
});

test('routes: a model no upstream serves gets the same 404 model_not_found, naming it, on every route', async (t) => {
  const sim = await startSim();
  const cfg = baseConfig(sim, { upstream: { models: ['sim-model'] } });
  const cp = await startCarpool(cfg);
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const routes = [
    ['/v1/completions', { model: 'gpt-unknown', prompt: 'x', max_tokens: 1 }],
    ['/v1/embeddings', { model: 'gpt-unknown', input: 'x' }],
    ['/v1/chat/completions', { model: 'gpt-unknown', messages: [{ role: 'user', content: 'x' }] }],
  ];
  for (const [p, body] of routes) {
    const r = await request(cp.port, 'POST', p, body);
    assert.equal(r.status, 404, `${p}: ${r.status} ${r.body}`);
    const e = JSON.parse(r.body).error;
    assert.equal(e.code, 'model_not_found', p);
    assert.equal(e.param, 'model', p);
    assert.equal(e.type, 'invalid_request_error', p);
    assert.ok(e.message.includes("'gpt-unknown'"), `${p}: the message does not name the model: ${e.message}`);
  }
  const ok = await request(cp.port, 'POST', '/v1/chat/completions', { model: 'sim-model', messages: [{ role: 'user', content: 'x' }] });
  assert.notEqual(ok.status, 404, `a served model on chat: ${ok.body}`);
});

test('routes: without a model, 400 on every route when no upstream serves any model; served when one does ("*")', async (t) => {
  const sim = await startSim();
  const cp = await startCarpool(baseConfig(sim, { upstream: { models: ['sim-model'] } }));
  const any = await startCarpool(baseConfig(sim)); // models: ["*"], the default
  t.after(async () => { await cp.stop(); await any.stop(); await sim.kill(); });
  const routes = [
    ['/v1/completions', { prompt: 'x', max_tokens: 1 }],
    ['/v1/embeddings', { input: 'x' }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }] }],
  ];
  for (const [p, body] of routes) {
    const r = await request(cp.port, 'POST', p, body);
    assert.equal(r.status, 400, `${p}: ${r.status} ${r.body}`);
    const e = JSON.parse(r.body).error;
    assert.equal(e.param, 'model', p);
    assert.equal(e.type, 'invalid_request_error', p);
    assert.match(e.message, /model/, p);
    const ok = await request(any.port, 'POST', p, body);
    assert.equal(ok.status, 200, `${p} through an upstream serving "*" (llama.cpp clients omit model): ${ok.body}`);
  }
  // a request that names no model by its nature goes to any upstream (it got 502 "No upstream is configured")
  const models = await request(cp.port, 'GET', '/v1/models');
  assert.equal(models.status, 200, models.body);
  assert.equal(JSON.parse(models.body).data[0].id, 'sim-model');
});
