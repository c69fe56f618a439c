// Operations: SSE keep-alive comments, access log, Server-Timing, /healthz, /readyz, /metrics.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, tmpdir } = require('./lib');
const { expected } = require('./simgen');

test('keep-alive comments while a client waits for its first token', async (t) => {
  const sim = await startSim(['--step-ms', '5', '--call-ms', '900']);
  const cp = await startCarpool(baseConfig(sim, { timeouts: { sse_keepalive_ms: 200 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'slow start', max_tokens: 5, stream: true });
  assert.equal(r.status, 200);
  const comments = r.body.split('\n').filter((l) => l === ': keep-alive').length;
  assert.ok(comments >= 2, `${comments} keep-alive comments`);
  assert.ok(r.body.indexOf(': keep-alive') < r.body.indexOf('data: '), 'comments come before the first token');
  assert.equal(collect(parseSse(r.body)).text[0], expected('slow start', { maxTokens: 5 }).text);
});

test('an upstream refusal after keep-alives started becomes an SSE error event', async (t) => {
  // an upstream that takes 600 ms to refuse
  const http = require('node:http');
  const slow = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => setTimeout(() => {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'prompt is invalid', type: 'invalid_request_error', param: 'prompt', code: null } }));
    }, 600));
  });
  await new Promise((resolve) => slow.listen(0, '127.0.0.1', resolve));
  const cp = await startCarpool(baseConfig({ url: `http://127.0.0.1:${slow.address().port}` },
    { timeouts: { sse_keepalive_ms: 150 }, upstream: { dialect: 'openai' } }));
  t.after(async () => { await cp.stop(); slow.close(); });
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'late refusal', max_tokens: 5, stream: true });
  assert.equal(r.status, 200);
  assert.ok(r.body.startsWith(': keep-alive'));
  const got = collect(parseSse(r.body));
  assert.equal(got.errors.length, 1);
  assert.match(got.errors[0].error.message, /invalid/);
  assert.equal(got.done, 1);
});

test('access log: one JSON line per request with batch, queue wait, TTFT; Server-Timing header', async (t) => {
  const sim = await startSim(['--step-ms', '5']);
  const dir = tmpdir();
  const file = path.join(dir, 'access.log');
  const cfg = baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 40 } });
  cfg.log.access = file;
  const cp = await startCarpool(cfg);
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const res = await Promise.all([0, 1, 2].map((i) => request(cp.port, 'POST', '/v1/completions',
    { model: 'm', prompt: `logged ${i}`, max_tokens: 4, stream: i === 0 })));
  for (const r of res) assert.match(r.headers['server-timing'], /^queue;dur=\d+(\.\d+)?$/);
  await request(cp.port, 'GET', '/healthz');
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines.length, 4);
  const comp = lines.filter((l) => l.route === '/v1/completions');
  assert.equal(comp.length, 3);
  const batches = new Set(comp.map((l) => l.batch));
  assert.equal(batches.size, 1, 'the three shared one batch');
  for (const l of comp) {
    assert.equal(l.status, 200);
    assert.equal(l.prompts, 1);
    assert.equal(l.batch_size, 3);
    assert.ok(l.queue_ms >= 0 && l.queue_ms < 1000);
    assert.ok(l.ttft_ms > 0 && l.duration_ms >= l.ttft_ms);
    assert.ok(l.bytes > 0);
    assert.equal(l.upstream, sim.url);
    assert.match(l.time, /^\d{4}-\d\d-\d\dT/);
  }
  assert.ok(!fs.readFileSync(file, 'utf8').includes('Bearer'), 'no secrets in the access log');
});

test('/healthz, /readyz once the upstream answered, /metrics counts the traffic sent', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 40 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  assert.equal((await request(cp.port, 'GET', '/healthz')).status, 200);
  // ready once the dialect probe was answered; one /readyz only, as the duration count below counts it
  for (const until = Date.now() + 5000; !/dialect vllm \(detected\)/.test(cp.log()) && Date.now() < until;)
    await new Promise((r) => setTimeout(r, 20));
  assert.equal((await request(cp.port, 'GET', '/readyz')).status, 200);
  await Promise.all([0, 1, 2, 3].map((i) => request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: [`m${i}a`, `m${i}b`], max_tokens: 3 })));
  const m = await cp.metrics();
  assert.equal(m.carpool_requests_total, 4);
  assert.equal(m.carpool_prompts_total, 8);
  assert.equal(m.carpool_upstream_calls_total, 1);
  assert.equal(m.carpool_upstream_call_prompts_total, 8);
  assert.equal(m['carpool_http_requests_total{route="/v1/completions",status="200"}'], 4);
  assert.equal(m['carpool_prompts_per_call_bucket{le="8"}'], 1);
  assert.equal(m['carpool_prompts_per_call_bucket{le="4"}'], 0);
  assert.equal(m.carpool_prompts_per_call_sum, 8);
  assert.equal(m.carpool_queue_seconds_count, 4);
  assert.equal(m.carpool_duration_seconds_count, 6, 'the 4 completions and the 2 probes above');
  const s = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'counted', max_tokens: 5, stream: true });
  assert.equal(s.status, 200);
  await request(cp.port, 'POST', '/v1/completions', '{broken');
  const m2 = await cp.metrics();
  assert.equal(m2.carpool_tokens_streamed_total, expected('counted', { maxTokens: 5 }).tokens.length);
  assert.equal(m2.carpool_streams_started_total, 1);
  assert.equal(m2.carpool_open_streams, 0);
  assert.equal(m2['carpool_http_requests_total{route="/v1/completions",status="400"}'], 1);
  await sim.kill('SIGKILL');
  for (let i = 0; i < 3; i++) {
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `after ${i}`, max_tokens: 3 }, {}, { timeoutMs: 8000 });
    assert.equal(r.status, 502);
  }
  // /readyz turns 503 only after the failures last its grace period: readiness.test.js
  const m3 = await cp.metrics();
  assert.ok(m3[`carpool_upstream_failures_by_cause_total{upstream="${sim.url}",cause="connect"}`] >= 3);
  assert.equal((await request(cp.port, 'GET', '/healthz')).status, 200);
});
