// Batching and splitting, end to end: the real carpool in front of the simulator.
'use strict';
const assert = require('node:assert/strict');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect } = require('./lib');
const { expected } = require('./simgen');

async function streamCompletion(port, body) {
  const t0 = Date.now();
  const r = await request(port, 'POST', '/v1/completions', { ...body, stream: true });
  return { ...r, elapsed: Date.now() - t0, ...collect(parseSse(r.body)) };
}

for (const dialect of ['vllm', 'openai', 'llamacpp']) {
  test(`${dialect}: concurrent streaming clients share calls and each gets exactly its own tokens`, async (t) => {
    const sim = await startSim(['--dialect', dialect, '--step-ms', '5']);
    const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 50 } }));
    t.after(async () => { await cp.stop(); await sim.kill(); });
    const N = 40;
    const results = await Promise.all(Array.from({ length: N }, (_, i) =>
      streamCompletion(cp.port, { model: 'sim-model', prompt: `${dialect} client ${i}`, max_tokens: 12 })));
    results.forEach((r, i) => {
      const want = expected(`${dialect} client ${i}`, { maxTokens: 12 });
      assert.equal(r.status, 200);
      assert.match(r.headers['content-type'], /^text\/event-stream/);
      assert.equal(r.headers['cache-control'], 'no-cache');
      assert.equal(r.headers['x-accel-buffering'], 'no');
      assert.deepEqual(Object.keys(r.text), ['0'], `client ${i} saw indexes ${Object.keys(r.text)}`);
      assert.equal(r.text[0], want.text, `each client gets exactly its own tokens: client ${i}`);
      assert.equal(r.finish[0], want.finish_reason);
      assert.equal(r.done, 1);
      for (const c of r.chunks) assert.equal(typeof c.id, 'string');
    });
    const st = await sim.stats();
    assert.ok(st.completion_calls <= 5, `${st.completion_calls} upstream calls for ${N} clients`);
    assert.equal(st.prompts, N);
  });
}

test('mixed n, array prompts, token ids, stream and non-stream in one window', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '5']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 80 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const reqs = [
    { prompt: ['mix a0', 'mix a1', 'mix a2'], n: 1, stream: true },
    { prompt: 'mix b', n: 1, stream: false },
    { prompt: ['mix c0', 'mix c1'], n: 1, stream: false },
    { prompt: 'mix d', n: 2, stream: true },
    { prompt: ['mix e0', 'mix e1'], n: 2, stream: false },
    { prompt: [11, 12, 13], n: 1, stream: true },
    { prompt: [[21, 22], [23]], n: 1, stream: false },
  ];
  const res = await Promise.all(reqs.map((r) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', max_tokens: 10, ...r })));
  res.forEach((r, k) => {
    const q = reqs[k];
    assert.equal(r.status, 200, r.body);
    const prompts = Array.isArray(q.prompt) && !(typeof q.prompt[0] === 'number') ? q.prompt : [q.prompt];
    let got;
    if (q.stream) {
      got = collect(parseSse(r.body));
      assert.equal(got.done, 1);
    } else {
      const j = JSON.parse(r.body);
      assert.equal(j.object, 'text_completion');
      got = { text: {}, finish: {} };
      const idx = j.choices.map((c) => c.index);
      assert.deepEqual(idx, [...idx].sort((a, b) => a - b), 'choices sorted by index');
      for (const c of j.choices) { got.text[c.index] = c.text; got.finish[c.index] = c.finish_reason; }
      const completion = prompts.reduce((a, p) => a + Array.from({ length: q.n }, (_, j) => expected(p, { choice: j, maxTokens: 10 }).tokens.length).reduce((x, y) => x + y, 0), 0);
      assert.equal(j.usage.completion_tokens, completion, `usage belongs to its owner: request ${k} completion_tokens`);
    }
    assert.equal(Object.keys(got.text).length, prompts.length * q.n, `request ${k}`);
    prompts.forEach((p, pi) => {
      for (let j = 0; j < q.n; j++) {
        const want = expected(p, { choice: j, maxTokens: 10 });
        assert.equal(got.text[pi * q.n + j], want.text, `request ${k} prompt ${pi} choice ${j}`);
        assert.equal(got.finish[pi * q.n + j], want.finish_reason);
      }
    });
  });
  const st = await sim.stats();
  // n and the prompt kind are part of the batch key: n=1 text, n=2 text, n=1 token ids
  assert.ok(st.completion_calls <= 4, `calls: ${st.completion_calls}`);
});

// Several prompts with n >= 2 in one call: the upstream numbers choice j of slot p as p * n + j, the
// client gets (p - s) * n + j back, with its own usage only, exact (vLLM's continuous usage stats) or
// counted from its own choices (OpenAI). max_tokens 12: most choices stream more than 5 events.
for (const dialect of ['vllm', 'openai']) {
  test(`${dialect}: several prompts with n >= 2, streamed and not, each client gets its own choices and exact usage`, async (t) => {
    const sim = await startSim(['--dialect', dialect, '--step-ms', '3']);
    const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 150 } }));
    t.after(async () => { await cp.stop(); await sim.kill(); });
    const reqs = Array.from({ length: 8 }, (_, k) => ({
      prompt: Array.from({ length: 2 + (k % 2) }, (_, p) => `${dialect} multi ${k} p${p}`),
      n: k < 6 ? 2 : 3,
      stream: k % 3 !== 2,
    }));
    const res = await Promise.all(reqs.map((q) => request(cp.port, 'POST', '/v1/completions', { model: 'sim-model',
      max_tokens: 12, ...q, ...(q.stream ? { stream_options: { include_usage: true } } : {}) })));
    let long = 0;
    res.forEach((r, k) => {
      const q = reqs[k];
      assert.equal(r.status, 200, r.body);
      const want = q.prompt.flatMap((p) => Array.from({ length: q.n }, (_, j) => expected(p, { choice: j, maxTokens: 12 })));
      long += want.filter((w) => w.tokens.length > 5).length;
      let got, usage;
      if (q.stream) {
        got = collect(parseSse(r.body));
        assert.equal(got.done, 1, `client ${k}: one [DONE]`);
        usage = got.usage;
      } else {
        const j = JSON.parse(r.body);
        got = { text: {}, finish: {} };
        for (const c of j.choices) { got.text[c.index] = c.text; got.finish[c.index] = c.finish_reason; }
        assert.deepEqual(j.choices.map((c) => c.index), want.map((_, i) => i), `client ${k}: choices in index order`);
        usage = j.usage;
      }
      assert.deepEqual(Object.keys(got.text).map(Number), want.map((_, i) => i), `index mapping: client ${k} gets its own ${want.length} choices, indexed from 0`);
      want.forEach((w, i) => {
        const where = `client ${k} (${q.prompt.length} prompts, n=${q.n}${q.stream ? ', streamed' : ''}) choice ${i} = prompt ${Math.floor(i / q.n)} choice ${i % q.n}`;
        assert.equal(got.text[i], w.text, `index mapping (p - s) * n + j: ${where}`);
        assert.equal(got.finish[i], w.finish_reason, where);
      });
      const completion = want.reduce((a, w) => a + w.tokens.length, 0);
      const prompt = q.prompt.reduce((a, p) => a + Math.max(1, Math.ceil(Buffer.byteLength(p) / 4)), 0);
      assert.ok(usage, `client ${k}: usage`);
      assert.equal(usage.completion_tokens, completion, `usage belongs to its owner: client ${k} completion_tokens (all ${want.length} choices)`);
      assert.equal(usage.prompt_tokens, prompt, `usage belongs to its owner: client ${k} prompt_tokens`);
      assert.equal(usage.total_tokens, prompt + completion, `client ${k} total_tokens`);
    });
    assert.ok(long >= 10, `only ${long} choices longer than 5 tokens`);
    const st = await sim.stats();
    assert.equal(st.completion_calls, 2, 'one call for n = 2, one for n = 3');
  });
}

test('nobody waits for the slowest: an early finisher ends at once', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '25']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 50 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  // find a short and a long prompt under the deterministic lengths
  let short = null, long = null;
  for (let i = 0; (!short || !long) && i < 1000; i++) {
    const n = expected(`early ${i}`, { maxTokens: 16 }).tokens.length;
    if (n === 3 && !short) short = `early ${i}`;
    if (n === 16 && !long) long = `early ${i}`;
  }
  const [a, b, c] = await Promise.all([
    streamCompletion(cp.port, { model: 'm', prompt: short, max_tokens: 16 }),
    streamCompletion(cp.port, { model: 'm', prompt: long, max_tokens: 16 }),
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: short, max_tokens: 16 }).then((r) => r),
  ]);
  assert.equal(a.text[0], expected(short).text);
  assert.equal(b.text[0], expected(long).text);
  assert.equal(JSON.parse(c.body).choices[0].text, expected(short).text);
  assert.equal((await sim.stats()).completion_calls, 1, 'all three shared one call');
  // 3 tokens vs 16 tokens at 25 ms a step: the short stream must end long before the long one
  assert.ok(a.elapsed + 200 < b.elapsed, `nobody waits for the slowest: the 3-token stream ended after ${a.elapsed} ms, the 16-token one after ${b.elapsed} ms`);
});

test('one invalid prompt fails only its own client (bisection)', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 60 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const prompts = Array.from({ length: 7 }, (_, i) => (i === 4 ? 'bad INVALID prompt' : `good ${i}`));
  const res = await Promise.all(prompts.map((p, i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: p, max_tokens: 8, stream: i % 2 === 0 })));
  res.forEach((r, i) => {
    if (i === 4) {
      assert.equal(r.status, 400, r.body);
      const e = JSON.parse(r.body).error;
      assert.match(e.message, /invalid/);
      assert.equal(e.type, 'invalid_request_error');
      return;
    }
    assert.equal(r.status, 200, `client ${i}: ${r.body}`);
    const text = i % 2 === 0 ? collect(parseSse(r.body)).text[0] : JSON.parse(r.body).choices[0].text;
    assert.equal(text, expected(`good ${i}`, { maxTokens: 8 }).text);
  });
  const m = await cp.metrics();
  assert.ok(m.carpool_bisections_total >= 1);
});

test('stream_options.include_usage: each client gets its own usage, never the batch total', async (t) => {
  for (const dialect of ['vllm', 'openai']) {
    const sim = await startSim(['--dialect', dialect, '--step-ms', '2']);
    const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 60 } }));
    try {
      const ps = ['usage one', 'usage number two is longer', 'usage 3'];
      const res = await Promise.all(ps.map((p) => request(cp.port, 'POST', '/v1/completions',
        { model: 'm', prompt: p, max_tokens: 16, stream: true, stream_options: { include_usage: true } })));
      res.forEach((r, i) => {
        const got = collect(parseSse(r.body));
        const want = expected(ps[i]);
        assert.ok(got.usage, `${dialect}: usage chunk present`);
        assert.equal(got.usage.completion_tokens, want.tokens.length, `${dialect}: completion tokens of client ${i}`);
        assert.equal(got.usage.prompt_tokens, Math.max(1, Math.ceil(Buffer.byteLength(ps[i]) / 4)));
        assert.equal(got.usage.total_tokens, got.usage.prompt_tokens + got.usage.completion_tokens);
        assert.equal(r.headers['x-carpool-usage'], dialect === 'vllm' ? 'exact' : 'estimated');
        for (const c of got.chunks) if (c.choices.length) assert.equal(c.usage, undefined, 'no per-chunk usage leaks');
      });
    } finally {
      await cp.stop();
      await sim.kill();
    }
  }
});

test('llama.cpp dialect: non-stream array shape, per-prompt usage, n>1 refused by carpool with 400 (llama-server would answer 500)', async (t) => {
  const sim = await startSim(['--dialect', 'llamacpp', '--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 60 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const [multi, single, stream] = await Promise.all([
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: ['ll a', 'll b'], max_tokens: 6 }),
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'll c', max_tokens: 6 }),
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'll d', max_tokens: 6, stream: true }),
  ]);
  const arr = JSON.parse(multi.body);
  assert.ok(Array.isArray(arr), 'two prompts: an array, like llama-server');
  assert.equal(arr.length, 2);
  arr.forEach((o, i) => {
    assert.equal(o.choices[0].index, i);
    assert.equal(o.choices[0].text, expected(['ll a', 'll b'][i], { maxTokens: 6 }).text);
    assert.equal(o.usage.completion_tokens, expected(['ll a', 'll b'][i], { maxTokens: 6 }).tokens.length);
    assert.ok(o.timings, 'timings preserved');
  });
  const one = JSON.parse(single.body);
  assert.ok(!Array.isArray(one));
  assert.equal(one.choices[0].text, expected('ll c', { maxTokens: 6 }).text);
  const s = collect(parseSse(stream.body));
  assert.equal(s.text[0], expected('ll d', { maxTokens: 6 }).text);
  assert.equal(s.done, 1);
  assert.equal((await sim.stats()).completion_calls, 1);
  const calls = (await sim.stats()).completion_calls;
  const n2 = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'll e', n: 2 });
  assert.equal(n2.status, 400, n2.body);
  const e = JSON.parse(n2.body).error;
  assert.equal(e.param, 'n');
  assert.equal(e.type, 'invalid_request_error');
  assert.match(e.message, /llama\.cpp/);
  assert.equal((await sim.stats()).completion_calls, calls, 'the upstream was not asked');
});

test('different credentials never share an upstream call (pass-through auth)', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 60 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const keys = ['Bearer tenant-a', 'Bearer tenant-b', 'Bearer tenant-a', 'Bearer tenant-b'];
  const res = await Promise.all(keys.map((k, i) => request(cp.port, 'POST', '/v1/completions',
    { model: 'm', prompt: `auth ${i}`, max_tokens: 4 }, { Authorization: k })));
  res.forEach((r, i) => assert.equal(JSON.parse(r.body).choices[0].text, expected(`auth ${i}`, { maxTokens: 4 }).text));
  const st = await sim.stats();
  assert.equal(st.completion_calls, 2);
  assert.equal(st.auth['Bearer tenant-a'], 1);
  assert.equal(st.auth['Bearer tenant-b'], 1);
});

test('adaptive policy sends at once while the upstream has room', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'adaptive', max_wait_ms: 2000 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const t0 = Date.now();
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'alone', max_tokens: 3 });
  assert.equal(r.status, 200);
  assert.ok(Date.now() - t0 < 1000, 'did not wait for the 2 s window');
});

test('everything else passes through: chat completions (stream and not) and /v1/models', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const models = await request(cp.port, 'GET', '/v1/models');
  assert.equal(models.status, 200);
  assert.equal(JSON.parse(models.body).data[0].id, 'sim-model');
  const chat = await request(cp.port, 'POST', '/v1/chat/completions',
    { model: 'm', messages: [{ role: 'user', content: 'hi there' }], max_tokens: 5 });
  assert.equal(chat.status, 200);
  assert.equal(JSON.parse(chat.body).choices[0].message.content, expected('hi there', { maxTokens: 5 }).text);
  const cs = await request(cp.port, 'POST', '/v1/chat/completions',
    { model: 'm', messages: [{ role: 'user', content: 'hi there' }], max_tokens: 5, stream: true });
  assert.match(cs.headers['content-type'], /event-stream/);
  const text = parseSse(cs.body).filter((e) => e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data).choices[0]?.delta?.content || '').join('');
  assert.equal(text, expected('hi there', { maxTokens: 5 }).text);
  const nf = await request(cp.port, 'GET', '/v1/nothing');
  assert.equal(nf.status, 404);
});
