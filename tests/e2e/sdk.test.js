// The official OpenAI SDK (npm "openai") and curl as clients of carpool: only the base URL changes.
'use strict';
const assert = require('node:assert/strict');
const OpenAI = require('openai');
const { VERSION } = require('openai/version');
const { test, startSim, startCarpool, baseConfig, curl, parseSse, collect } = require('./lib');
const { expected } = require('./simgen');

test('openai SDK: streaming and non-streaming completions, concurrently, through one batch', async (t) => {
  // openai 4.x streams through node-fetch, which fails with "Premature close" on Node 18 (Debian 12's)
  t.diagnostic(`node ${process.version}, openai ${VERSION}`);
  assert.ok(Number(VERSION.split('.')[0]) >= 5, `openai ${VERSION}: the suite needs 5 or later`);
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '5']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 80 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const client = new OpenAI({ baseURL: `${cp.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
  const streamed = async (prompt) => {
    const s = await client.completions.create({ model: 'sim-model', prompt, max_tokens: 12, stream: true,
      stream_options: { include_usage: true } });
    let text = '';
    let finish = null;
    let usage = null;
    for await (const chunk of s) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        assert.equal(c.index, 0);
        text += c.text;
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
    return { text, finish, usage };
  };
  const plain = (prompt) => client.completions.create({ model: 'sim-model', prompt, max_tokens: 12 });
  const prompts = Array.from({ length: 10 }, (_, i) => `sdk prompt ${i}`);
  const out = await Promise.all(prompts.map((p, i) => (i % 2 ? plain(p) : streamed(p))));
  out.forEach((o, i) => {
    const want = expected(prompts[i], { maxTokens: 12 });
    if (i % 2) {
      assert.equal(o.choices.length, 1);
      assert.equal(o.choices[0].text, want.text);
      assert.equal(o.choices[0].finish_reason, want.finish_reason);
      assert.equal(o.usage.completion_tokens, want.tokens.length);
    } else {
      assert.equal(o.text, want.text);
      assert.equal(o.finish, want.finish_reason);
      assert.equal(o.usage.completion_tokens, want.tokens.length);
    }
  });
  const st = await sim.stats();
  assert.ok(st.completion_calls <= 2, `${st.completion_calls} calls`);
  // An error surfaces in the SDK as an APIError with carpool's status and message.
  await assert.rejects(client.completions.create({ model: 'sim-model', prompt: [] }),
    (e) => e.status === 400 && /empty/.test(e.message));
  // Pass-through: chat completions via the SDK.
  const chat = await client.chat.completions.create({ model: 'sim-model', messages: [{ role: 'user', content: 'sdk chat' }], max_tokens: 4 });
  assert.equal(chat.choices[0].message.content, expected('sdk chat', { maxTokens: 4 }).text);
});

test('curl: streaming with -N, headers, and a non-streaming answer', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const s = await curl(['-sN', '-D', '-', `${cp.url}/v1/completions`, '-H', 'Content-Type: application/json',
    '-d', JSON.stringify({ model: 'm', prompt: 'curl stream', max_tokens: 7, stream: true })]);
  assert.equal(s.code, 0);
  const [head, body] = s.out.split('\r\n\r\n');
  assert.match(head, /^HTTP\/1\.1 200/);
  assert.match(head, /Content-Type: text\/event-stream/i);
  assert.match(head, /Cache-Control: no-cache/i);
  assert.match(head, /X-Accel-Buffering: no/i);
  assert.match(head, /Transfer-Encoding: chunked/i);
  assert.match(head, /X-Carpool-Batch: \d+; size=1/i);
  const got = collect(parseSse(body));
  assert.equal(got.text[0], expected('curl stream', { maxTokens: 7 }).text);
  assert.equal(got.done, 1);
  const n = await curl(['-s', `${cp.url}/v1/completions`, '-d', JSON.stringify({ model: 'm', prompt: 'curl plain', max_tokens: 7 })]);
  assert.equal(JSON.parse(n.out).choices[0].text, expected('curl plain', { maxTokens: 7 }).text);
});
