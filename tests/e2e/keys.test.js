// Client keys (constant-time check, per-key limits), carpool's own upstream credential, reload.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test, startSim, startCarpool, request, toYaml, parseSse, collect } = require('./lib');
const { expected } = require('./simgen');

const SECRET = 'upstream-secret-9f3a';

function keysConfig(sim, auth, extra = {}) {
  return {
    workers: 1,
    listen: [{ address: '127.0.0.1:0' }],
    upstreams: [{ url: sim.url, dialect: 'vllm', api_key_env: 'CARPOOL_TEST_UPSTREAM_KEY' }],
    batching: { policy: 'fixed', max_wait_ms: 30 },
    auth,
    log: { level: 'debug' },
    ...extra,
  };
}
const env = { CARPOOL_TEST_UPSTREAM_KEY: SECRET };
const bearer = (k) => ({ Authorization: `Bearer ${k}` });

test('keys mode: missing or wrong keys get 401; the upstream only ever sees carpool\'s credential', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(keysConfig(sim, { keys: ['sk-alpha', 'sk-beta'] }), { env });
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const none = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'x' });
  assert.equal(none.status, 401);
  assert.equal(JSON.parse(none.body).error.code, 'invalid_api_key');
  const wrong = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'x' }, bearer('sk-alphx'));
  assert.equal(wrong.status, 401);
  const res = await Promise.all(['sk-alpha', 'sk-beta'].map((k, i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `key ${i}`, max_tokens: 4 }, bearer(k))));
  res.forEach((r, i) => assert.equal(JSON.parse(r.body).choices[0].text, expected(`key ${i}`, { maxTokens: 4 }).text));
  const st = await sim.stats();
  assert.deepEqual(Object.keys(st.auth), [`Bearer ${SECRET}`], 'only carpool\'s credential upstream');
  assert.equal(st.completion_calls, 1, 'both tenants share the call made with carpool\'s credential');
  // pass-through routes too
  await sim.reset();
  assert.equal((await request(cp.port, 'GET', '/v1/models', undefined, bearer('sk-alpha'))).status, 200);
  const seen = (await sim.stats()).requests.filter((e) => e.path === '/v1/models');
  assert.deepEqual(seen.map((e) => e.auth), [`Bearer ${SECRET}`], 'pass-through: only carpool\'s credential upstream');
  assert.ok(!cp.log().includes(SECRET), 'the upstream secret is never logged');
  assert.ok(!cp.log().includes('sk-alpha'), 'client keys are never logged');
});

test('per-key limits: concurrent requests and requests per minute answer 429 with Retry-After', async (t) => {
  const sim = await startSim(['--step-ms', '40']);
  const cp = await startCarpool(keysConfig(sim, {
    clients: [{ key: 'sk-one-at-a-time', max_concurrent: 1 }, { key: 'sk-slow', rate_limit_rpm: 6 }],
  }), { env });
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const first = request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'long one', max_tokens: 16, stream: true }, bearer('sk-one-at-a-time'));
  await new Promise((r) => setTimeout(r, 100));
  const second = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'second', max_tokens: 2 }, bearer('sk-one-at-a-time'));
  assert.equal(second.status, 429);
  assert.ok(Number(second.headers['retry-after']) >= 1);
  assert.equal(JSON.parse(second.body).error.code, 'rate_limit_exceeded');
  assert.equal(collect(parseSse((await first).body)).text[0], expected('long one').text);
  const again = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'third', max_tokens: 2 }, bearer('sk-one-at-a-time'));
  assert.equal(again.status, 200, 'the slot is free again once the first ended');
  const r1 = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'rpm 1', max_tokens: 2 }, bearer('sk-slow'));
  const r2 = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'rpm 2', max_tokens: 2 }, bearer('sk-slow'));
  assert.equal(r1.status, 200);
  assert.equal(r2.status, 429);
  assert.ok(Number(r2.headers['retry-after']) >= 1);
  assert.equal((await cp.metrics()).carpool_key_limited_total, 2);
});

test('SIGHUP reload: a good file applies (new key), a bad file is refused and the old config stays; streams go on', async (t) => {
  const sim = await startSim(['--step-ms', '50']);
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'carpool-keys-'));
  const keysFile = path.join(dir, 'keys');
  fs.writeFileSync(keysFile, '# tenants\nsk-file-1 max_concurrent=4\n');
  const cfg = keysConfig(sim, { keys_file: keysFile });
  const cp = await startCarpool(cfg, { env });
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const ok = async (k) => (await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `r ${k}`, max_tokens: 2 }, bearer(k))).status;
  assert.equal(await ok('sk-file-1'), 200);
  assert.equal(await ok('sk-file-2'), 401);
  const stream = request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'during reload', max_tokens: 16, stream: true }, bearer('sk-file-1'));
  await new Promise((r) => setTimeout(r, 150));
  fs.writeFileSync(keysFile, 'sk-file-1\nsk-file-2 rpm=600\n');
  cp.proc.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await ok('sk-file-2'), 200, 'the new key works after reload');
  // a bad file: refused, old config stays
  fs.writeFileSync(cp.file, fs.readFileSync(cp.file, 'utf8') + 'bogus_key: 1\n');
  cp.proc.kill('SIGHUP');
  await new Promise((r) => setTimeout(r, 200));
  assert.match(cp.log(), /reload failed, keeping the running config: .*:\d+:\d+: unknown key "bogus_key"/);
  assert.equal(await ok('sk-file-2'), 200);
  const m = await cp.metrics();
  assert.equal(m.carpool_config_reloads_total, 1);
  assert.equal(m.carpool_config_reload_failures_total, 1);
  const s = await stream;
  assert.equal(collect(parseSse(s.body)).text[0], expected('during reload').text, 'the stream in flight finished');
});
