// Listeners and client limits: TLS termination, IPv6, several listeners at once, max_clients, the
// client idle timeout; and the request budget (rate_limit_rpm) packing prompts instead of refusing.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const { test, startSim, startCarpool, baseConfig, request, curl, tmpdir, parseSse, collect, makeCerts } = require('./lib');
const { expected } = require('./simgen');


test('TLS termination, IPv6 and plain listeners at once', async (t) => {
  const dir = tmpdir();
  const certs = makeCerts(dir);
  const sim = await startSim(['--step-ms', '2']);
  const cfg = baseConfig(sim);
  cfg.listen = [
    { address: '127.0.0.1:0' },
    { address: '127.0.0.1:0', tls: { cert: certs.cert, key: certs.key } },
    { address: '[::1]:0' },
  ];
  const cp = await startCarpool(cfg);
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const tlsPort = Number(cp.log().match(/listening on 127\.0\.0\.1:(\d+) \(tls\)/)[1]);
  const v6Port = Number(cp.log().match(/listening on \[::1\]:(\d+)/)[1]);
  const body = JSON.stringify({ model: 'm', prompt: 'over tls', max_tokens: 5, stream: true });
  const ok = await curl(['-sN', '--cacert', certs.ca, `https://localhost:${tlsPort}/v1/completions`,
    '-H', 'Content-Type: application/json', '-d', body]);
  assert.equal(ok.code, 0, ok.err);
  assert.equal(collect(parseSse(ok.out)).text[0], expected('over tls', { maxTokens: 5 }).text);
  // an unknown CA is refused by the client; TLS 1.1 is refused by carpool
  const untrusted = await curl(['-s', `https://localhost:${tlsPort}/healthz`]);
  assert.notEqual(untrusted.code, 0);
  const old = await curl(['-s', '--cacert', certs.ca, '--tlsv1.0', '--tls-max', '1.1', `https://localhost:${tlsPort}/healthz`]);
  assert.notEqual(old.code, 0, 'TLS 1.1 must be refused');
  const v6 = await curl(['-s', `http://[::1]:${v6Port}/v1/completions`, '-d', JSON.stringify({ model: 'm', prompt: 'over v6', max_tokens: 4 })]);
  assert.equal(JSON.parse(v6.out).choices[0].text, expected('over v6', { maxTokens: 4 }).text);
});

test('max_clients caps open connections; client_idle_ms closes idle keep-alive connections', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { limits: { max_clients: 3 }, timeouts: { client_idle_ms: 400 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const socks = [];
  for (let i = 0; i < 3; i++) {
    const s = net.connect(cp.port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    socks.push(s);
  }
  await new Promise((r) => setTimeout(r, 100));
  const fourth = net.connect(cp.port, '127.0.0.1');
  const answer = await new Promise((resolve) => {
    let data = '';
    fourth.on('data', (d) => { data += d; });
    fourth.on('close', () => resolve(data));
    fourth.on('error', () => resolve(data));
  });
  assert.match(answer, /^HTTP\/1\.1 503/);
  assert.match(answer, /"error":\{"message"/);
  // the idle ones are closed by carpool after client_idle_ms
  const closed = await Promise.all(socks.map((s) => new Promise((resolve) => {
    const t0 = Date.now();
    s.on('close', () => resolve(Date.now() - t0));
    s.on('error', () => {});
  })));
  for (const ms of closed) assert.ok(ms < 2000, `closed after ${ms} ms`);
  const after = await request(cp.port, 'GET', '/healthz', undefined, {}, { agent: false });
  assert.equal(after.status, 200);
});

test('rate_limit_rpm: with the budget below the arrival rate nothing is refused; prompts pack into fewer calls', async (t) => {
  const sim = await startSim(['--step-ms', '5']);
  // 60 requests per minute: a burst of 6, then one call a second
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'adaptive', max_batch_size: 64 },
    upstream: { rate_limit_rpm: 60 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const N = 60;
  const t0 = Date.now();
  const res = await Promise.all(Array.from({ length: N }, (_, i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `budget ${i}`, max_tokens: 4 }, {}, { timeoutMs: 20000 })));
  res.forEach((r, i) => {
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`budget ${i}`, { maxTokens: 4 }).text);
  });
  const st = await sim.stats();
  assert.ok(st.completion_calls <= 8, `${st.completion_calls} upstream calls for ${N} requests within the budget`);
  assert.ok(st.max_prompts_per_call >= 20, `largest call ${st.max_prompts_per_call}`);
  t.diagnostic(`${N} requests in ${Date.now() - t0} ms, ${st.completion_calls} calls, largest ${st.max_prompts_per_call}`);
});
