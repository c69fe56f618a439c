// Kept-alive upstream connections that the server closes (issue 13): llama.cpp b4748 closes the
// connection after every streamed answer while advertising `Keep-Alive: timeout=5, max=100`; any
// server may close an idle connection at any moment. carpool must lose no request to that, must not
// reuse what the server will close, and must not count it against the upstream.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const fs = require('node:fs');
const { test, startSim, startCarpool, request, parseSse, collect, tmpdir, makeCerts } = require('./lib');
const { expected } = require('./simgen');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The sim's /stats on a connection of its own each time, so that its count of connections is exact.
const fresh = new http.Agent({ keepAlive: false });
const simStats = async (sim) => JSON.parse((await request(sim.port, 'GET', '/stats', undefined, {}, { agent: fresh })).body);
const simReset = (sim) => request(sim.port, 'POST', '/stats/reset', '', {}, { agent: fresh });

function metric(m, name, url) {
  return m[`${name}{upstream="${url}"}`];
}

// carpool's default config: nothing but where to listen and the upstream's URL.
function defaultConfig(sim) {
  return { listen: [{ address: '127.0.0.1:0' }], upstreams: [{ url: sim.url }] };
}

// The same without the load polls (GET /metrics every 500 ms), for tests that count connections.
function quietConfig(sim, upstream = {}) {
  return { listen: [{ address: '127.0.0.1:0' }], workers: 1, upstreams: [{ url: sim.url, load_poll_ms: 0, ...upstream }] };
}

function checkStream(r, prompt, maxTokens, what) {
  assert.equal(r.status, 200, `${what}: ${r.body}`);
  const got = collect(parseSse(r.body));
  const want = expected(prompt, { maxTokens });
  assert.deepEqual(got.errors, [], `${what}: error events`);
  assert.equal(got.text[0], want.text, `${what}: text`);
  assert.equal(got.finish[0], want.finish_reason, `${what}: finish_reason`);
  assert.equal(got.done, 1, `${what}: one [DONE]`);
  assert.equal(got.chunks.filter((c) => c.choices[0].text !== '').length, want.tokens.length, `${what}: every token`);
}

// flushed: the server closes as soon as the answer has left (carpool mostly sees it before reuse);
// next: it closes when the next request arrives, unanswered (only a re-send can save that request).
for (const when of ['next', 'flushed']) {
test(`llama.cpp close-after-stream=${when}: 48 streaming clients x 3 rounds through the default config lose nothing`, async (t) => {
  const sim = await startSim(['--dialect', 'llamacpp', `--close-after-stream=${when}`, '--keep-alive', '5', '--slots', '4',
    '--step-ms', '2']);
  const cp = await startCarpool(defaultConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const N = 48;
  const maxTokens = 24;
  for (let round = 0; round < 3; round++) {
    const res = await Promise.all(Array.from({ length: N }, (_, i) => request(cp.port, 'POST', '/v1/completions',
      { model: 'm', prompt: `ka r${round} c${i}`, max_tokens: maxTokens, stream: true }, {}, { timeoutMs: 60000 })));
    res.forEach((r, i) => checkStream(r, `ka r${round} c${i}`, maxTokens, `round ${round} client ${i}`));
    await sleep(50); // the next round finds connections the server has just closed, or is closing
  }
  const m = await cp.metrics();
  const st = await simStats(sim);
  t.diagnostic(`upstream calls ${st.completion_calls}, closed after stream ${st.connections.closed_after_stream}, ` +
    `conns accepted ${st.connections.accepted}; carpool: reused ${metric(m, 'carpool_upstream_conn_reused_total', sim.url)}, ` +
    `closed by server ${metric(m, 'carpool_upstream_conn_closed_by_server_total', sim.url)}, ` +
    `re-sent ${metric(m, 'carpool_upstream_resent_total', sim.url)}`);
  assert.equal(m.carpool_retries_total, 0, 'no call needed a retry');
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0);
  assert.equal(metric(m, 'carpool_upstream_ejections_total', sim.url), 0);
  assert.equal(metric(m, 'carpool_upstream_healthy', sim.url), 1);
  assert.ok(st.connections.closed_after_stream > 0, 'the sim closed connections after streams');
  assert.ok(metric(m, 'carpool_upstream_conn_closed_by_server_total', sim.url) > 0, 'carpool saw the closes');
  if (when === 'next') {
    assert.ok(metric(m, 'carpool_upstream_resent_total', sim.url) > 0, 'calls cut on reused connections were re-sent');
    assert.equal(metric(m, 'carpool_upstream_resent_total', sim.url), st.connections.dropped_requests, 'each cut call once');
  }
});
}

test('a server that closes every reused connection under the request: re-sent at once, not backed off, not ejected', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--drop-reused', '--step-ms', '1']);
  const cp = await startCarpool(quietConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const N = 12;
  const started = Date.now();
  // Pass-through calls (chat), one after another: each finds the previous call's connection idle in
  // the pool (a JSON answer: carpool keeps it), sends on it, is cut, and goes again on a new one.
  for (let i = 0; i < N; i++) {
    const r = await request(cp.port, 'POST', '/v1/chat/completions',
      { model: 'm', messages: [{ role: 'user', content: `reuse ${i}` }], max_tokens: 4 });
    assert.equal(r.status, 200, `call ${i}: ${r.body}`);
    assert.equal(JSON.parse(r.body).choices[0].message.content, expected(`reuse ${i}`, { maxTokens: 4 }).text);
  }
  const elapsed = Date.now() - started;
  let m = await cp.metrics();
  let st = await simStats(sim);
  const resent = metric(m, 'carpool_upstream_resent_total', sim.url);
  t.diagnostic(`${N} pass-through calls in ${elapsed} ms; re-sent ${resent}; sim dropped ${st.connections.dropped_requests}`);
  assert.ok(st.connections.dropped_requests >= N - 1, `the sim cut ${st.connections.dropped_requests} reused calls`);
  assert.equal(resent, st.connections.dropped_requests, 'each cut call was re-sent once');
  assert.ok(metric(m, 'carpool_upstream_conn_reused_total', sim.url) >= N - 1);
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0, 'not counted as failures');
  assert.equal(metric(m, 'carpool_upstream_ejections_total', sim.url), 0, 'never ejected');
  assert.equal(metric(m, 'carpool_upstream_healthy', sim.url), 1);
  // a retry would back off 100 ms, an ejection 1 s: re-sending at once keeps each call fast
  assert.ok(elapsed < N * 100, `${N} calls took ${elapsed} ms`);

  // Batched completions go upstream as streams. After two streamed connections are cut, carpool
  // learns that this server closes connections after streams and stops keeping them.
  const cutBefore = st.connections.dropped_requests;
  let cutLate = 0;
  for (let i = 0; i < 8; i++) {
    if (i === 5) cutLate = (await simStats(sim)).connections.dropped_requests;
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `batched ${i}`, max_tokens: 4 });
    assert.equal(r.status, 200, `completion ${i}: ${r.body}`);
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`batched ${i}`, { maxTokens: 4 }).text);
  }
  m = await cp.metrics();
  st = await simStats(sim);
  const cut = st.connections.dropped_requests - cutBefore;
  t.diagnostic(`8 batched completions: ${cut} cut, ${st.connections.dropped_requests - cutLate} of them among the last 3`);
  // (connections pooled after a JSON answer, e.g. at start, teach nothing: how many get cut varies)
  assert.ok(cut >= 2, `${cut} cut`);
  assert.equal(st.connections.dropped_requests - cutLate, 0, 'once learnt, no streamed connection is kept to be cut');
  assert.match(cp.log(), /closes connections after streamed answers/);
  assert.equal(metric(m, 'carpool_upstream_resent_total', sim.url), st.connections.dropped_requests);
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0);
  assert.equal(m.carpool_retries_total, 0, 'no retry budget spent');
  assert.equal(metric(m, 'carpool_upstream_ejections_total', sim.url), 0);
  assert.ok(!/ejected|retry \d/.test(cp.log()), 'no retry or ejection in the log');
});

test('idle connections past the server\'s Keep-Alive timeout are not reused; within it they are', async (t) => {
  // the sim advertises timeout=2 and closes idle connections after 2 s; carpool drops them after 1 s
  const sim = await startSim(['--dialect', 'vllm', '--keep-alive', '2', '--step-ms', '1']);
  const cp = await startCarpool(quietConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const call = async (i) => {
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `idle ${i}`, max_tokens: 3 });
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`idle ${i}`, { maxTokens: 3 }).text);
  };
  await call(0);
  await sleep(200);
  await simReset(sim);
  let m0 = await cp.metrics();
  await call(1); // 0.2 s idle: reused
  let m1 = await cp.metrics();
  assert.equal(metric(m1, 'carpool_upstream_conn_reused_total', sim.url) - metric(m0, 'carpool_upstream_conn_reused_total', sim.url), 1,
    'a connection idle 0.2 s of 2 is reused');
  assert.equal((await simStats(sim)).connections.accepted, 1, 'no new connection but the /stats one');
  await sleep(1600); // past carpool's allowance (timeout 2 s less 1 s), still short of the server's 2 s
  await simReset(sim);
  m0 = await cp.metrics();
  await call(2);
  m1 = await cp.metrics();
  const st = await simStats(sim);
  assert.equal(metric(m1, 'carpool_upstream_conn_reused_total', sim.url) - metric(m0, 'carpool_upstream_conn_reused_total', sim.url), 0,
    'the idle connection was not reused');
  assert.ok(metric(m1, 'carpool_upstream_conn_idle_closed_total', sim.url) >= 1, 'carpool closed it when its time was up');
  assert.equal(st.connections.accepted, 2, 'a new connection (and the /stats one)');
  assert.equal(st.connections.dropped_requests, 0);
  assert.equal(metric(m1, 'carpool_upstream_resent_total', sim.url), 0, 'nothing needed re-sending');
  assert.equal(metric(m1, 'carpool_upstream_failures_total', sim.url), 0);
});

test('a server that closes idle connections without saying so: found closed before reuse, nothing lost', async (t) => {
  // no Keep-Alive header; the server closes idle connections after 300 ms, carpool would keep them 4 s
  const sim = await startSim(['--dialect', 'vllm', '--idle-close-ms', '300', '--step-ms', '1']);
  const cp = await startCarpool(quietConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  for (let i = 0; i < 4; i++) {
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `quiet ${i}`, max_tokens: 3 });
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`quiet ${i}`, { maxTokens: 3 }).text);
    await sleep(600);
  }
  const m = await cp.metrics();
  assert.ok(metric(m, 'carpool_upstream_conn_closed_by_server_total', sim.url) >= 3, 'the closes were seen');
  // (the first call may reuse the dialect probe's connection, not 300 ms old yet)
  assert.ok(metric(m, 'carpool_upstream_conn_reused_total', sim.url) <= 1, 'no closed connection was reused');
  assert.equal(metric(m, 'carpool_upstream_resent_total', sim.url), 0);
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0);
  assert.equal(m.carpool_retries_total, 0);
});

test('Connection: close and Keep-Alive max= are honoured: no request on a connection the server will close', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--keep-alive', '30,3', '--step-ms', '1']);
  const cp = await startCarpool(quietConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await simReset(sim);
  const N = 9;
  for (let i = 0; i < N; i++) {
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `max ${i}`, max_tokens: 2 });
    assert.equal(r.status, 200, r.body);
  }
  const m = await cp.metrics();
  const st = await simStats(sim);
  // the sim says max=3 and closes after the 3rd answer: carpool stops at 3 requests a connection
  assert.equal(st.connections.dropped_requests, 0);
  assert.equal(metric(m, 'carpool_upstream_resent_total', sim.url), 0, 'never sent on a connection being closed');
  assert.ok(st.connections.accepted >= Math.ceil(N / 3), `${st.connections.accepted} connections for ${N} calls`);
  assert.ok(metric(m, 'carpool_upstream_conn_reused_total', sim.url) >= N - Math.ceil(N / 3) - 1, 'reused up to max');
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0);
});

test('TLS upstream that cuts reused connections: re-sent on a new TLS connection, nothing lost', async (t) => {
  const dir = tmpdir();
  const certs = makeCerts(dir);
  const sim = await startSim(['--dialect', 'vllm', '--drop-reused', '--step-ms', '1', '--tls-cert', certs.cert, '--tls-key', certs.key]);
  const url = `https://127.0.0.1:${sim.port}`;
  const cp = await startCarpool({ listen: [{ address: '127.0.0.1:0' }], workers: 1,
    upstreams: [{ url, dialect: 'vllm', load_poll_ms: 0, tls: { ca_file: certs.ca } }] });
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const N = 6;
  for (let i = 0; i < N; i++) {
    const r = await request(cp.port, 'POST', '/v1/chat/completions',
      { model: 'm', messages: [{ role: 'user', content: `tls ${i}` }], max_tokens: 3 });
    assert.equal(r.status, 200, `call ${i}: ${r.body}`);
    assert.equal(JSON.parse(r.body).choices[0].message.content, expected(`tls ${i}`, { maxTokens: 3 }).text);
  }
  const m = await cp.metrics();
  assert.ok(metric(m, 'carpool_upstream_resent_total', url) >= N - 1, `re-sent ${metric(m, 'carpool_upstream_resent_total', url)}`);
  assert.equal(metric(m, 'carpool_upstream_failures_total', url), 0);
  assert.equal(metric(m, 'carpool_upstream_ejections_total', url), 0);
});

test('llama.cpp-like connection handling (6 connections served, backlog 5): 48 streaming clients through carpool, all served', async (t) => {
  const sim = await startSim(['--dialect', 'llamacpp', '--slots', '4', '--step-ms', '1', '--keep-alive', '5',
    '--close-after-stream=next', '--max-conns', '6', '--backlog', '5']);
  const cp = await startCarpool(defaultConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const N = 48;
  const maxTokens = 32;
  const started = Date.now();
  for (let round = 0; round < 2; round++) {
    const res = await Promise.all(Array.from({ length: N }, (_, i) => request(cp.port, 'POST', '/v1/completions',
      { model: 'm', prompt: `llama r${round} c${i}`, max_tokens: maxTokens, stream: true }, {}, { timeoutMs: 60000 })));
    res.forEach((r, i) => checkStream(r, `llama r${round} c${i}`, maxTokens, `round ${round} client ${i}`));
  }
  const st = await simStats(sim);
  const m = await cp.metrics();
  t.diagnostic(`${Date.now() - started} ms; sim: max served ${st.connections.max_served}, waited ${st.connections.waited}, ` +
    `calls ${st.completion_calls}; carpool re-sent ${metric(m, 'carpool_upstream_resent_total', sim.url)}`);
  assert.ok(st.connections.max_served <= 6, 'the sim never served more than 6 connections at once');
  assert.equal(metric(m, 'carpool_upstream_failures_total', sim.url), 0);
  assert.equal(m.carpool_retries_total, 0);
  assert.equal(metric(m, 'carpool_upstream_ejections_total', sim.url), 0);
});

test('keepalive_conns caps the idle connections kept; keepalive_ms: 0 keeps none', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '20']);
  t.after(async () => { await sim.kill(); });
  const burst = (cp, tag) => Promise.all(Array.from({ length: 4 }, async (_, i) => {
    const r = await request(cp.port, 'POST', '/v1/chat/completions',
      { model: 'm', messages: [{ role: 'user', content: `${tag} ${i}` }], max_tokens: 3 });
    assert.equal(r.status, 200, r.body);
  }));
  for (const [upstream, want] of [[{ keepalive_conns: 1 }, 1], [{ keepalive_ms: 0 }, 0]]) {
    const cp = await startCarpool({ listen: [{ address: '127.0.0.1:0' }], workers: 1,
      upstreams: [{ url: sim.url, dialect: 'vllm', load_poll_ms: 0, ...upstream }] });
    await burst(cp, 'first'); // four calls at once: four connections
    const before = metric(await cp.metrics(), 'carpool_upstream_conn_reused_total', sim.url);
    await burst(cp, 'second');
    const reused = metric(await cp.metrics(), 'carpool_upstream_conn_reused_total', sim.url) - before;
    assert.equal(reused, want, `${JSON.stringify(upstream)}: ${reused} of the second four calls reused a connection`);
    await cp.stop();
  }
});
