// An upstream that is not there yet, goes away and comes back: dialect detection retries until it
// answers (one warning meanwhile), /readyz says 503 until an upstream has answered and turns 503 for a
// dead one only after its grace period, and carpool's own 502s name the upstream (issue 11 items 1, 4, 14).
'use strict';
const assert = require('node:assert/strict');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, freePort } = require('./lib');
const { expected } = require('./simgen');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const count = (log, re) => log.split('\n').filter((l) => re.test(l)).length;

// Polls until cond() holds; resolves with the ms it took.
async function until(cond, timeoutMs, what) {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
  return Date.now() - t0;
}

const readyz = async (cp) => (await request(cp.port, 'GET', '/readyz')).status; // one look, no waiting

test('dialect auto with the upstream down at start: retried until it answers, then requests use its dialect', async (t) => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const cp = await startCarpool(baseConfig({ url }, { workers: 2 }));
  let sim = null;
  t.after(async () => { await cp.stop(); if (sim) await sim.kill(); });

  assert.equal(await readyz(cp), 503, 'no upstream has ever answered');
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: 'early', max_tokens: 3 });
  assert.equal(r.status, 502, r.body);
  assert.ok(JSON.parse(r.body).error.message.includes(url), `the 502 names the upstream: ${r.body}`);
  const pass = await request(cp.port, 'POST', '/v1/chat/completions', { model: 'sim-model', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(pass.status, 502, pass.body);
  assert.ok(JSON.parse(pass.body).error.message.includes(url), `the pass-through 502 names the upstream: ${pass.body}`);

  await sleep(3500); // tries at about 1 s and 3 s after start, each failing
  const warned = / warn .*GET \/v1\/models failed \(\w+\): dialect not detected, using openai until it is/;
  assert.equal(count(cp.log(), warned), 1, cp.log());
  assert.ok(!/detected\)/.test(cp.log()), cp.log());
  assert.equal(await readyz(cp), 503);

  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'llamacpp', '--slots', '6', '--step-ms', '2']);
  // tries at about 1, 3, 7 and 15 s after start: the next is at most 8 s away, well within the bound
  const took = await until(() => count(cp.log(), /dialect llamacpp \(detected\)/) > 0, 25000, 'detection');
  t.diagnostic(`detected ${took} ms after the upstream started`);
  await sleep(300);
  assert.equal(count(cp.log(), /dialect llamacpp \(detected\)/), 1, 'said once for both workers');
  assert.equal(count(cp.log(), warned), 1, 'the warning was not repeated per try');
  assert.equal(await readyz(cp), 200);

  // served as llama.cpp: carpool reads its slots from /props (only the llamacpp dialect asks there)
  await until(async () => (await cp.metrics())[`carpool_upstream_sequence_capacity{upstream="${url}"}`] === 6, 5000,
    'capacity from /props');
  const res = await Promise.all([0, 1, 2].map((i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: `late ${i}`, max_tokens: 5, stream: true })));
  res.forEach((x, i) => {
    assert.equal(x.status, 200, x.body);
    const got = collect(parseSse(x.body));
    assert.equal(got.text[0], expected(`late ${i}`, { maxTokens: 5 }).text);
    assert.equal(got.done, 1);
  });
});

test('/readyz: ready once answered, not ready only after a dead upstream failed for the grace period, ready at its first answer back; detection again when it comes back', async (t) => {
  let sim = await startSim(['--dialect', 'vllm', '--step-ms', '2']);
  const port = sim.port;
  const cp = await startCarpool(baseConfig(sim, { upstream: { health_path: '/health', health_interval_ms: 200 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await until(async () => (await readyz(cp)) === 200, 5000, 'ready after the first answer');
  await until(() => /dialect vllm \(detected\)/.test(cp.log()), 5000, 'vllm detected');

  const t0 = Date.now();
  await sim.kill('SIGKILL');
  await sleep(1500); // several failed health checks: failing for under 1.5 s of its 5 s grace
  assert.equal(await readyz(cp), 200, 'damped: still ready 1.5 s into the failure');
  await until(async () => (await readyz(cp)) === 503, 15000, 'not ready');
  const notReadyAfter = Date.now() - t0;
  t.diagnostic(`not ready ${notReadyAfter} ms after the upstream died (grace 5000 ms)`);
  assert.ok(notReadyAfter >= 4900, `503 after ${notReadyAfter} ms, before the grace period`);
  await sleep(600);
  assert.equal(await readyz(cp), 503, 'stays not ready while it is down');

  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'llamacpp', '--step-ms', '2']);
  const back = await until(async () => (await readyz(cp)) === 200, 8000, 'ready again');
  t.diagnostic(`ready again ${back} ms after the upstream came back`);
  // another server came back at that address: its dialect is detected again
  await until(() => /dialect llamacpp \(detected\)/.test(cp.log()), 8000, 'llamacpp detected after the ejection');
});

test('/readyz with nothing but carpool\'s own probe (dialect openai, no health_path, no load polls, no client traffic): not ready until it answers, and ready again when it comes back', async (t) => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const cp = await startCarpool(baseConfig({ url }, { upstream: { dialect: 'openai', load_poll_ms: 0 } }));
  let sim = null;
  t.after(async () => { await cp.stop(); if (sim) await sim.kill(); });
  await sleep(1200);
  assert.equal(await readyz(cp), 503);
  assert.equal(count(cp.log(), / warn .*GET \/v1\/models failed \(connect\): not ready until it answers/), 1, cp.log());
  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'openai']);
  // tries at about 1, 3, 7 and 15 s after start: ready at the next one, with no client request sent
  const took = await until(async () => (await readyz(cp)) === 200, 25000, 'ready by the probe alone');
  t.diagnostic(`ready ${took} ms after the upstream started`);
  // one failed call starts the grace period and the probes (nothing else would look at it again):
  // not ready after the grace period, ready again when a probe finds it back
  await sim.kill('SIGKILL');
  assert.equal(await readyz(cp), 200, 'nothing has failed yet');
  const r = await request(cp.port, 'POST', '/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.status, 502);
  await until(async () => (await readyz(cp)) === 503, 15000, 'not ready after the grace period');
  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'openai']);
  const back = await until(async () => (await readyz(cp)) === 200, 25000, 'ready again by the probe alone');
  t.diagnostic(`ready again ${back} ms after the upstream came back`);
});
