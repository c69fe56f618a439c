// Dispatch: room counted in sequences that free one by one, the adaptive window, and policy: fixed.
// The real carpool in front of the simulator; timings carry wide margins for a loaded 2-core machine.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, freePort } = require('./lib');
const { expected } = require('./simgen');

// The first prompt `${prefix} ${i}` whose natural answer is `len` tokens long.
function promptOfLength(prefix, len) {
  for (let i = 0; ; i++) if (expected(`${prefix} ${i}`).tokens.length === len) return `${prefix} ${i}`;
}

// A streamed completion, with the times (ms since t0) of its first token and of its end.
function timedStream(port, t0, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify({ model: 'sim-model', stream: true, ...body });
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions',
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      let first = null;
      res.on('data', (c) => {
        text += c;
        if (first === null && /"text"/.test(text)) first = Date.now() - t0;
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, first, end: Date.now() - t0,
        ...collect(parseSse(text)) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const queueMs = (h) => Number((/queue;dur=([\d.]+)/.exec(h['server-timing'] || '') || [])[1]);

for (const dialect of ['vllm', 'llamacpp']) {
  test(`${dialect}: a short member's end frees its slot at once; a queued request starts then, not when the call ends`, async (t) => {
    // 2 slots, 150 ms per token: the short member (3 tokens) ends ~2 s before the long one (16)
    const sim = await startSim(['--dialect', dialect, '--step-ms', '150', '--slots', '2']);
    const cp = await startCarpool(baseConfig(sim, {
      upstream: { dialect, max_sequences: 2, load_poll_ms: 0 },
      batching: { policy: 'fixed', max_wait_ms: 100 },
    }));
    t.after(async () => { await cp.stop(); await sim.kill(); });
    const short = promptOfLength(`${dialect} short`, 3);
    const long = promptOfLength(`${dialect} long`, 16);
    const late = promptOfLength(`${dialect} late`, 3);
    const t0 = Date.now();
    const a = timedStream(cp.port, t0, { prompt: short });
    const b = timedStream(cp.port, t0, { prompt: long });
    await sleep(200); // a and b went together as one call of 2 sequences: the upstream is full
    const c = timedStream(cp.port, t0, { prompt: late });
    const [ra, rb, rc] = await Promise.all([a, b, c]);
    for (const [r, p] of [[ra, short], [rb, long], [rc, late]]) {
      assert.equal(r.status, 200);
      assert.equal(r.text[0], expected(p).text);
      assert.equal(r.done, 1);
    }
    assert.equal(ra.headers['x-carpool-batch'], rb.headers['x-carpool-batch'], 'a and b shared a call');
    assert.match(ra.headers['x-carpool-batch'], /size=2/);
    // c waited for room (it had none), then went when a's sequence ended - long before b's end
    // (its 100 ms window, then ~250 ms for room: a's 3 tokens end ~550 ms after the start, c came at 200)
    assert.ok(queueMs(rc.headers) >= 200, `c queued ${queueMs(rc.headers)} ms: it should have waited for room`);
    assert.ok(rc.first >= ra.end - 100, `c's first token at ${rc.first} ms, a ended at ${ra.end} ms`);
    assert.ok(rc.end < rb.end - 500, `c ended at ${rc.end} ms, b (the long member) at ${rb.end} ms`);
    const st = await sim.stats();
    assert.equal(st.completion_calls, 2);
    assert.equal(st.prompts, 3);
  });
}

test('no room: queued requests pack into what freed, one call per freed set, up to max_batch_size', async (t) => {
  const sim = await startSim(['--step-ms', '100', '--slots', '4']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', max_sequences: 4, load_poll_ms: 0 },
    batching: { policy: 'adaptive', max_wait_ms: 10, max_batch_size: 3 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const t0 = Date.now();
  // four long ones fill the 4 slots; then 10 more wait in carpool
  const first = [0, 1, 2, 3].map((i) => timedStream(cp.port, t0, { prompt: `fill ${i}`, max_tokens: 6 }));
  await sleep(150);
  const rest = Array.from({ length: 10 }, (_, i) => timedStream(cp.port, t0, { prompt: `wait ${i}`, max_tokens: 6 }));
  const all = await Promise.all([...first, ...rest]);
  all.forEach((r, i) => {
    const p = i < 4 ? `fill ${i}` : `wait ${i - 4}`;
    assert.equal(r.status, 200);
    assert.equal(r.text[0], expected(p, { maxTokens: 6 }).text, p);
  });
  const st = await sim.stats();
  assert.equal(st.prompts, 14);
  assert.ok(st.max_prompts_per_call <= 4, `a call carried ${st.max_prompts_per_call} prompts (4 slots)`);
  // never more sequences on the upstream than its 4 slots: nothing queued inside the simulator
  assert.ok(st.max_inflight <= 4, `${st.max_inflight} calls at once`);
  for (const r of all.slice(4)) assert.ok(queueMs(r.headers) > 100, 'the late ones waited in carpool, not upstream');
});

test('adaptive: one request at a time goes at once, with no window wait', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 0 }, batching: { policy: 'adaptive', max_wait_ms: 500 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  for (let i = 0; i < 8; i++) {
    const t0 = Date.now();
    const r = await timedStream(cp.port, t0, { prompt: `one at a time ${i}`, max_tokens: 3 });
    assert.equal(r.status, 200);
    assert.ok(queueMs(r.headers) < 50, `request ${i} queued ${r.headers['server-timing']}`);
    assert.ok(r.first < 400, `request ${i}: first token after ${r.first} ms (window 500)`);
  }
  assert.equal((await sim.stats()).completion_calls, 8);
});

test('adaptive: under load prompts share calls, and none waits past the window while there is room', async (t) => {
  const sim = await startSim(['--step-ms', '5']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 0 }, batching: { policy: 'adaptive', max_wait_ms: 150 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const N = 40;
  const t0 = Date.now();
  const res = await Promise.all(Array.from({ length: N }, (_, i) =>
    timedStream(cp.port, t0, { prompt: `burst ${i}`, max_tokens: 5 })));
  res.forEach((r, i) => {
    assert.equal(r.status, 200);
    assert.equal(r.text[0], expected(`burst ${i}`, { maxTokens: 5 }).text);
    assert.ok(queueMs(r.headers) <= 150 + 100, `request ${i} queued ${queueMs(r.headers)} ms (window 150)`);
  });
  const st = await sim.stats();
  assert.equal(st.prompts, N);
  assert.ok(st.completion_calls <= 12, `${st.completion_calls} calls for ${N} requests arriving together`);
});

test('policy fixed still holds each batch for max_wait_ms', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 0 }, batching: { policy: 'fixed', max_wait_ms: 300 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const t0 = Date.now();
  const r = await timedStream(cp.port, t0, { prompt: 'held', max_tokens: 3 });
  assert.equal(r.status, 200);
  // libevent arms timers from the loop's cached clock, which a busy turn (ASan on a loaded machine)
  // leaves some ms behind: the window may close up to that much early
  assert.ok(r.first >= 250, `first token after ${r.first} ms, window 300`);
  assert.ok(queueMs(r.headers) >= 250, r.headers['server-timing']);
});

// --- the upstream's own load signals ---

const gauge = async (cp, sim, name) => (await cp.metrics())[`${name}{upstream="${sim.url}"}`];
const count = (log, re) => (log.match(new RegExp(re, 'g')) || []).length;

async function until(what, fn, ms = 5000) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test('vllm /metrics: a server that queues shows its capacity; carpool then waits in its own queue', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '100', '--slots', '2']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 100 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  assert.equal(await gauge(cp, sim, 'carpool_upstream_sequence_capacity'), 0, 'unknown until the server shows it');
  // another client of the same server fills its 2 slots and queues a third request there
  const t0 = Date.now();
  const others = ['o1', 'o2', 'o3'].map((p) => timedStream(sim.port, t0, { prompt: p, max_tokens: 16 }));
  await until('capacity 2 learned', async () => (await gauge(cp, sim, 'carpool_upstream_sequence_capacity')) === 2);
  const age = await gauge(cp, sim, 'carpool_upstream_load_signal_age_seconds');
  assert.ok(age >= 0 && age < 1, `signal age ${age}`);
  // the server is full with others' work: carpool's request waits in carpool, not in the server,
  // and goes once a poll shows the server's first two requests ended (1.6 s after they started)
  const mine = await timedStream(cp.port, t0, { prompt: 'mine', max_tokens: 3 });
  const ends = (await Promise.all(others)).map((r) => { assert.equal(r.status, 200); return r.end; });
  assert.equal(mine.status, 200);
  assert.equal(mine.text[0], expected('mine', { maxTokens: 3 }).text);
  assert.ok(queueMs(mine.headers) > 100, `queued in carpool ${queueMs(mine.headers)} ms`);
  assert.ok(mine.first >= Math.min(...ends) - 150, `mine's first token at ${mine.first} ms, others ended at ${ends}`);
  assert.match(cp.log(), /saturated at 2 running \(1 waiting\): capacity 2 sequences/);
  assert.doesNotMatch(cp.log(), /no load signals/);
});

test('llamacpp /props: read once the server answers when carpool started first, and again after the server comes back with other slots', async (t) => {
  const port = await freePort();
  const up = { url: `http://127.0.0.1:${port}` };
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'llamacpp', load_poll_ms: 100 } }));
  let sim = null;
  t.after(async () => { await cp.stop(); if (sim) await sim.kill(); });
  await sleep(400); // several polls find nobody there
  assert.equal(await gauge(cp, up, 'carpool_upstream_sequence_capacity'), 0, 'no capacity before the server answers');
  assert.equal(count(cp.log(), 'no load signals'), 1, `the lost signals are said once: ${cp.log()}`);
  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'llamacpp', '--slots', '4']);
  await until('capacity 4 from /props', async () => (await gauge(cp, up, 'carpool_upstream_sequence_capacity')) === 4, 8000);
  await sim.kill();
  await sleep(300);
  sim = await startSim(['--listen', `127.0.0.1:${port}`, '--dialect', 'llamacpp', '--slots', '2']);
  await until('capacity 2 from /props after the restart', async () => (await gauge(cp, up, 'carpool_upstream_sequence_capacity')) === 2, 8000);
});

test('llamacpp /props: total_slots is the capacity; requests past it wait in carpool', async (t) => {
  const sim = await startSim(['--dialect', 'llamacpp', '--step-ms', '60', '--slots', '3']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'llamacpp', load_poll_ms: 100 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await until('capacity 3 from /props', async () => (await gauge(cp, sim, 'carpool_upstream_sequence_capacity')) === 3);
  // the log line is written with the gauge, but reaches this process on its own pipe: wait for it
  await until('the /props log line', () => /\/props says 3 slots/.test(cp.log()));
  const t0 = Date.now();
  const res = await Promise.all(Array.from({ length: 6 }, (_, i) =>
    timedStream(cp.port, t0, { prompt: `slot ${i}`, max_tokens: 8 })));
  res.forEach((r, i) => assert.equal(r.text[0], expected(`slot ${i}`, { maxTokens: 8 }).text));
  const waited = res.filter((r) => queueMs(r.headers) > 200).length;
  assert.equal(waited, 3, `requests that waited in carpool: ${res.map((r) => queueMs(r.headers)).join(', ')}`);
});

test('a server that exports nothing: said once in the log, carpool counts from its own calls', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '2', '--metrics', 'none']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 50, max_sequences: 4 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await sleep(400); // several polls, all 404
  const res = await Promise.all(Array.from({ length: 12 }, (_, i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `plain ${i}`, max_tokens: 4 })));
  res.forEach((r, i) => assert.equal(JSON.parse(r.body).choices[0].text, expected(`plain ${i}`, { maxTokens: 4 }).text));
  assert.equal(count(cp.log(), 'no load signals \\(GET /metrics: status 404\\)'), 1, cp.log());
  assert.equal(await gauge(cp, sim, 'carpool_upstream_load_signal_age_seconds'), -1);
  assert.equal(await gauge(cp, sim, 'carpool_upstream_sequence_capacity'), 4);
  assert.ok((await sim.stats()).max_prompts_per_call <= 4);
});

test('llama-server without --metrics: carpool reads /slots instead, and says the signals are back', async (t) => {
  const sim = await startSim(['--dialect', 'llamacpp', '--step-ms', '2', '--slots', '2', '--metrics', 'off']);
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'llamacpp', load_poll_ms: 50 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await until('signals back from /slots', async () => /load signals back \(GET \/slots/.test(cp.log()));
  assert.equal(count(cp.log(), 'no load signals \\(GET /metrics: status 501\\)'), 1, cp.log());
  assert.ok((await gauge(cp, sim, 'carpool_upstream_load_signal_age_seconds')) >= 0);
  assert.equal(await gauge(cp, sim, 'carpool_upstream_sequence_capacity'), 2);
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'via slots', max_tokens: 3 });
  assert.equal(JSON.parse(r.body).choices[0].text, expected('via slots', { maxTokens: 3 }).text);
});

test('a metrics endpoint that stops answering: the poll times out, said once, dispatch never waits for it', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '2', '--metrics-hang-after', '3']);
  // one call at a time: a hanging poll must not hold that call slot
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm', load_poll_ms: 100, max_inflight: 1 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  for (let i = 0; i < 8; i++) { // across the polls that answer, hang, and time out (1 s)
    const t0 = Date.now();
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `during ${i}`, max_tokens: 3 });
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`during ${i}`, { maxTokens: 3 }).text);
    assert.ok(Date.now() - t0 < 400, `request ${i} took ${Date.now() - t0} ms`);
    await sleep(200);
  }
  await until('the poll timed out', async () => /no load signals \(GET \/metrics: no answer in time\)/.test(cp.log()), 4000);
  await sleep(1500); // more polls time out: still said once
  assert.equal(count(cp.log(), 'no load signals'), 1, cp.log());
  assert.equal(await gauge(cp, sim, 'carpool_upstream_load_signal_age_seconds'), -1);
});

test('a hosted API under a request budget: arrivals at 10x the budget are all served, calls stay within it', async (t) => {
  const sim = await startSim(['--dialect', 'openai', '--step-ms', '5']);
  // 120 rpm: 2 calls a second, bursting up to 12 (6 s of budget)
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'openai', rate_limit_rpm: 120 }, batching: { policy: 'adaptive', max_wait_ms: 10 },
  }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const t0 = Date.now();
  const jobs = [];
  for (let i = 0; i < 60; i++) { // 20 a second for 3 s: ten times the budget
    jobs.push(timedStream(cp.port, t0, { prompt: `budget ${i}`, max_tokens: 4 }));
    await sleep(50);
  }
  const res = await Promise.all(jobs);
  const elapsed = (Date.now() - t0) / 1000;
  res.forEach((r, i) => {
    assert.equal(r.status, 200, `client ${i} got ${r.status}`);
    assert.equal(r.text[0], expected(`budget ${i}`, { maxTokens: 4 }).text);
  });
  const st = await sim.stats();
  assert.equal(st.prompts, 60);
  assert.ok(st.completion_calls <= 12 + Math.ceil(2 * elapsed), `${st.completion_calls} calls in ${elapsed} s`);
  assert.match(cp.log(), /dialect openai: no load figures to read/);
  assert.doesNotMatch(cp.log(), /GET \/metrics/, 'a hosted API is never polled');
});
