// What carpool says at start and on reload: each thing once however many workers learn it, and only
// what is true (a /v1/models that answers 404 is not a detected dialect).
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const { test, startSim, startCarpool, baseConfig, request } = require('./lib');
const { expected } = require('./simgen');

const count = (log, re) => log.split('\n').filter((l) => re.test(l)).length;

// Resolves once re matches a line of cp's log, then waits settleMs more for any repeat of it.
async function logged(cp, re, settleMs = 500, timeoutMs = 10000) {
  const until = Date.now() + timeoutMs;
  while (!count(cp.log(), re)) {
    if (Date.now() > until) throw new Error(`no ${re} in the log:\n${cp.log()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await new Promise((r) => setTimeout(r, settleMs));
  return count(cp.log(), re);
}

test('two workers: the detected dialect and the /info limit are logged once each', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--max-inputs', '4']);
  const cp = await startCarpool(baseConfig(sim, { workers: 2 }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  assert.match(cp.log(), /ready \(2 workers/);
  assert.equal(await logged(cp, /dialect vllm \(detected\)/), 1, cp.log());
  assert.equal(await logged(cp, /\/info says at most 4 inputs per call/), 1, cp.log());
  // both workers did learn it: their calls carry no more than 4 inputs
  const inputs = Array.from({ length: 9 }, (_, i) => `logs input ${i}`);
  const r = await request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input: inputs });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).data.length, 9);
  assert.ok((await sim.stats()).max_prompts_per_call <= 4);
});

test('GET /v1/models answering 404 is not a detection: one warning, no "(detected)", requests still go as openai', async (t) => {
  // an upstream without /v1/models: everything else goes to an openai-dialect sim
  const sim = await startSim(['--dialect', 'openai', '--step-ms', '2']);
  const seen = [];
  const up = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.url === '/v1/models') {
      res.writeHead(404, { 'Content-Type': 'application/json' });
      res.end('{"detail":"Not Found"}');
      return;
    }
    const fwd = http.request({ host: '127.0.0.1', port: sim.port, method: req.method, path: req.url, headers: req.headers },
      (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
    req.pipe(fwd);
  });
  await new Promise((r) => up.listen(0, '127.0.0.1', r));
  const cp = await startCarpool(baseConfig({ url: `http://127.0.0.1:${up.address().port}` }, { workers: 2 }));
  t.after(async () => { await cp.stop(); await new Promise((r) => up.close(r)); await sim.kill(); });
  assert.equal(await logged(cp, / warn .*GET \/v1\/models answered 404: dialect not detected, using openai/), 1, cp.log());
  assert.ok(!/detected\)/.test(cp.log()), cp.log());
  assert.equal(seen.filter((s) => s === 'GET /v1/models').length, 2, 'each worker probed');
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'after a 404 probe', max_tokens: 5 });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).choices[0].text, expected('after a 404 probe', { maxTokens: 5 }).text);
});

test('an upstream down at start: the failed probe is a warning, said once, and not a detection', async (t) => {
  const closed = http.createServer();
  await new Promise((r) => closed.listen(0, '127.0.0.1', r));
  const port = closed.address().port;
  await new Promise((r) => closed.close(r));
  const cp = await startCarpool(baseConfig({ url: `http://127.0.0.1:${port}` }, { workers: 2 }));
  t.after(() => cp.stop());
  assert.equal(await logged(cp, / warn .*GET \/v1\/models failed \(\w+\): dialect not detected, using openai/), 1, cp.log());
  assert.ok(!/detected\)/.test(cp.log()), cp.log());
});

test('two workers: a reload that fails is logged once', async (t) => {
  const sim = await startSim(['--dialect', 'vllm']);
  const cp = await startCarpool(baseConfig(sim, { workers: 2 }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  fs.appendFileSync(cp.file, 'bogus_key: 1\n');
  cp.proc.kill('SIGHUP');
  assert.equal(await logged(cp, /reload failed, keeping the running config: .*unknown key "bogus_key"/), 1, cp.log());
  assert.equal((await cp.metrics()).carpool_config_reload_failures_total, 1);
});
