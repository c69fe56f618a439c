// The simulator's model of upstreams: one that decodes like vLLM, where --slots schedules sequences one at a
// time in arrival order (a sequence takes a slot the step after one frees, not when a whole call ends),
// --answer-tokens gives answers of varied lengths, /stats reports sequences running and waiting.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { startSim, request, parseSse, collect } = require('./lib');
const { expected } = require('./simgen');

// A streamed completion that records, per choice index, when its first token and its finish_reason
// arrived (ms since the request was sent). `started` resolves when the response headers are in.
function timedStream(port, body) {
  const t0 = Date.now();
  const first = {}, finish = {}, text = {};
  let started;
  const headers = new Promise((resolve) => { started = resolve; });
  const done = new Promise((resolve, reject) => {
    const data = JSON.stringify({ ...body, stream: true });
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', agent: false,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      started();
      let buf = '';
      res.on('data', (c) => {
        buf += c;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const m = block.match(/^data: (.*)$/m);
          if (!m || m[1] === '[DONE]') continue;
          for (const ch of JSON.parse(m[1]).choices) {
            const now = Date.now() - t0;
            if (ch.text && first[ch.index] === undefined) first[ch.index] = now;
            text[ch.index] = (text[ch.index] || '') + ch.text;
            if (ch.finish_reason) finish[ch.index] = now;
          }
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, t0, first, finish, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
  return { headers, done };
}

// The first prompts "<prefix>N" whose natural length under `answers` satisfies want(length).
function promptWith(prefix, answers, want) {
  for (let i = 0; ; i++) {
    const p = `${prefix}${i}`;
    if (want(expected(p, { maxTokens: 100000, answers }).tokens.length)) return p;
  }
}

test('--slots: a queued request takes the slot of a short sequence as soon as it ends, not when its call ends', async (t) => {
  const answers = [4, 60];
  const sim = await startSim(['--slots', '2', '--step-ms', '20', '--answer-tokens', answers.join(':')]);
  t.after(() => sim.kill());
  // The short one lasts 8-12 steps (160 ms or more): time enough to read /stats while all three are in.
  const short = promptWith('short-', answers, (n) => n >= 8 && n <= 12);
  const long = promptWith('long-', answers, (n) => n >= 55);
  const late = promptWith('late-', answers, (n) => n >= 10);
  // One call of two sequences fills both slots; the third sequence arrives while they decode.
  const a = timedStream(sim.port, { prompt: [short, long], max_tokens: 1000 });
  await a.headers;
  const b = timedStream(sim.port, { prompt: late, max_tokens: 1000 });
  await b.headers;
  const mid = await sim.stats();
  assert.equal(mid.running, 2, JSON.stringify(mid));
  assert.equal(mid.waiting, 1, JSON.stringify(mid));
  const [ra, rb] = await Promise.all([a.done, b.done]);
  assert.equal(ra.text[0], expected(short, { maxTokens: 1000, answers }).text);
  assert.equal(ra.text[1], expected(long, { maxTokens: 1000, answers }).text);
  assert.equal(rb.text[0], expected(late, { maxTokens: 1000, answers }).text);
  const shortEnd = ra.t0 + ra.finish[0], longEnd = ra.t0 + ra.finish[1], lateFirst = rb.t0 + rb.first[0];
  t.diagnostic(`short ends at ${ra.finish[0]} ms, long at ${ra.finish[1]} ms; queued request's first token at ${lateFirst - ra.t0} ms`);
  assert.ok(lateFirst >= shortEnd, 'the queued sequence started before a slot was free');
  // ~50 steps of 20 ms separate the two ends: the queued one must start right after the short one.
  assert.ok(lateFirst < longEnd - 500, `the queued sequence waited for the whole call (${lateFirst - shortEnd} ms after the short one ended)`);
  const end = await sim.stats();
  assert.equal(end.running, 0);
  assert.equal(end.waiting, 0);
  assert.equal(end.max_running, 2);
  assert.equal(end.max_waiting, 1);
  await sim.reset();
  const zero = await sim.stats();
  assert.equal(zero.max_running, 0);
  assert.equal(zero.max_waiting, 0);
});

test('--slots: waiting sequences start in arrival order', async (t) => {
  // Each answer lasts 300 ms or more, so the first is still decoding when the last one arrives.
  const answers = [30, 40];
  const sim = await startSim(['--slots', '1', '--step-ms', '10', '--answer-tokens', answers.join(':')]);
  t.after(() => sim.kill());
  const calls = [];
  for (let i = 0; i < 4; i++) {
    const c = timedStream(sim.port, { prompt: `order-${i}`, max_tokens: 1000 });
    await c.headers; // the sim has queued this call before the next one is sent
    calls.push(c);
  }
  assert.equal((await sim.stats()).waiting, 3);
  const rs = await Promise.all(calls.map((c) => c.done));
  const starts = rs.map((r) => r.t0 + r.first[0]);
  const ends = rs.map((r) => r.t0 + r.finish[0]);
  for (let i = 1; i < rs.length; i++) {
    assert.ok(starts[i] >= ends[i - 1], `request ${i} started before request ${i - 1} ended`);
    assert.equal(rs[i].text[0], expected(`order-${i}`, { maxTokens: 1000, answers }).text);
  }
});

test('--answer-tokens 20:500: long answers, streamed and not, exactly as simgen.js predicts', async (t) => {
  const answers = [20, 500];
  const sim = await startSim(['--step-ms', '0', '--answer-tokens', '20:500']);
  t.after(() => sim.kill());
  const prompts = Array.from({ length: 24 }, (_, i) => `answer-${i}`);
  const lengths = prompts.map((p) => expected(p, { maxTokens: 1000, answers }).tokens.length);
  assert.ok(Math.max(...lengths) > 300 && Math.min(...lengths) < 200, `lengths ${lengths}`);
  const s = collect(parseSse((await request(sim.port, 'POST', '/v1/completions',
    { prompt: prompts, max_tokens: 1000, stream: true })).body));
  const ns = JSON.parse((await request(sim.port, 'POST', '/v1/completions', { prompt: prompts, max_tokens: 1000 })).body);
  prompts.forEach((p, i) => {
    const want = expected(p, { maxTokens: 1000, answers });
    assert.equal(s.text[i], want.text, `stream ${p}`);
    assert.equal(s.finish[i], 'stop');
    assert.equal(ns.choices[i].text, want.text, `non-stream ${p}`);
  });
  // Without max_tokens the API's default of 16 still caps the answer.
  const capped = JSON.parse((await request(sim.port, 'POST', '/v1/completions', { prompt: 'answer-0' })).body);
  assert.equal(capped.choices[0].text, expected('answer-0', { answers }).text);
  assert.equal(capped.choices[0].finish_reason, 'length');
  assert.equal(capped.usage.completion_tokens, 16);
});

test('--burst: a step gives each sequence its whole answer, one sequence after the other', async (t) => {
  const answers = [8, 8];
  // 300 ms a step: without --burst the 8 tokens would take 2.4 s; with it they all come in the first step.
  const sim = await startSim(['--burst', '--step-ms', '300', '--answer-tokens', answers.join(':')]);
  t.after(() => sim.kill());
  const prompts = ['burst-a', 'burst-b'];
  const timed = timedStream(sim.port, { prompt: prompts, max_tokens: 100 });
  const r = await timed.done;
  t.diagnostic(`first tokens at ${r.first[0]} and ${r.first[1]} ms, finishes at ${r.finish[0]} and ${r.finish[1]} ms`);
  assert.ok(r.finish[1] - r.first[0] < 200, `the answers took ${r.finish[1] - r.first[0]} ms: more than a step`);
  prompts.forEach((p, i) => assert.equal(r.text[i], expected(p, { maxTokens: 100, answers }).text, p));
  const body = (await request(sim.port, 'POST', '/v1/completions', { prompt: prompts, max_tokens: 100, stream: true })).body;
  const order = collect(parseSse(body)).chunks.map((c) => c.choices[0].index);
  assert.deepEqual(order, [...Array(8).fill(0), ...Array(8).fill(1)]);
});

test('--answer-tokens rejects malformed ranges', async () => {
  for (const bad of ['0:5', '9:8', '20', '1:100001']) {
    await assert.rejects(startSim(['--answer-tokens', bad]), /exited \(2\)/, bad);
  }
});

test('--rpm: a hosted API budget; past it, 429 with Retry-After and nothing decoded', async (t) => {
  const sim = await startSim(['--rpm', '3', '--step-ms', '1', '--dialect', 'openai']);
  t.after(() => sim.kill());
  const t0 = Date.now();
  for (let i = 0; i < 3; i++) {
    const r = await request(sim.port, 'POST', '/v1/completions', { prompt: `budget-${i}` });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.body).choices[0].text, expected(`budget-${i}`).text);
  }
  for (const p of ['/v1/completions', '/v1/embeddings']) {
    const r = await request(sim.port, 'POST', p, { prompt: 'over', input: 'over' });
    assert.equal(r.status, 429);
    const e = JSON.parse(r.body).error;
    assert.equal(e.type, 'requests');
    assert.match(e.message, /Rate limit reached for requests: limit 3 per minute/);
    // The oldest call leaves the 60 s window 60 s after it came.
    const wait = Number(r.headers['retry-after']);
    assert.ok(wait >= 59 - (Date.now() - t0) / 1000 && wait <= 60, `Retry-After ${wait}`);
    assert.equal(r.headers['x-ratelimit-limit-requests'], '3');
    assert.equal(r.headers['x-ratelimit-remaining-requests'], '0');
  }
  assert.equal((await request(sim.port, 'GET', '/health')).status, 200, 'GETs are not counted');
  const st = await sim.stats();
  assert.equal(st.rate_limited, 2);
  assert.equal(st.completion_calls, 3);
  await assert.rejects(startSim(['--rpm', '10000001']), /exited \(2\)/);
});
