// /v1/embeddings batching: the official SDK, float and base64, inputs over the upstream's limit.
'use strict';
const assert = require('node:assert/strict');
const OpenAI = require('openai');
const { test, startSim, startCarpool, baseConfig, request, assertEmbeddings } = require('./lib');
const { embedding } = require('./simgen');

const close = (a, b) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < 1e-6);
const fromBase64 = (s) => {
  const buf = Buffer.from(s, 'base64');
  return Array.from({ length: buf.length / 4 }, (_, i) => buf.readFloatLE(i * 4));
};
const ptoks = (s) => Math.max(1, Math.ceil(Buffer.byteLength(s) / 4));

test('embeddings through the openai SDK: batched, renumbered, float and base64, usage adds up', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '10']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 80 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const client = new OpenAI({ baseURL: `${cp.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
  const inputs = Array.from({ length: 12 }, (_, i) => (i % 3 === 0 ? [`emb ${i} a`, `emb ${i} bb`] : `emb ${i}`));
  const res = await Promise.all(inputs.map((input) => client.embeddings.create({ model: 'sim-model', input, encoding_format: 'float' })));
  res.forEach((r, i) => {
    const list = Array.isArray(inputs[i]) ? inputs[i] : [inputs[i]];
    assert.equal(r.data.length, list.length);
    r.data.forEach((d, k) => {
      assert.equal(d.index, k);
      assert.ok(close(d.embedding, embedding(list[k])), `client ${i} input ${k}`);
    });
    assert.equal(r.usage.prompt_tokens, list.reduce((a, s) => a + ptoks(s), 0));
  });
  const st = await sim.stats();
  assert.ok(st.embedding_calls <= 2, `${st.embedding_calls} upstream calls for 12 requests`);
  // base64 passes through as the upstream encoded it
  const raw = await request(cp.port, 'POST', '/v1/embeddings', { model: 'sim-model', input: ['b64 one', 'b64 two'], encoding_format: 'base64' });
  const j = JSON.parse(raw.body);
  assert.equal(typeof j.data[0].embedding, 'string');
  assert.ok(close(fromBase64(j.data[1].embedding), embedding('b64 two')));
  // and a token-id input
  const tok = await request(cp.port, 'POST', '/v1/embeddings', { model: 'sim-model', input: [[5, 6, 7], [8]] });
  assert.ok(close(JSON.parse(tok.body).data[0].embedding, embedding([5, 6, 7])));
});

test('a request over the upstream input limit (learnt from its /info) is split across calls and reassembled in order', async (t) => {
  // the sim, like text-embeddings-inference, says its limit (4) in GET /info; the config says nothing
  const sim = await startSim(['--step-ms', '5', '--max-inputs', '4']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 30 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  await new Promise((r) => setTimeout(r, 200)); // the /info probe
  assert.match(cp.log(), /at most 4 inputs per call/);
  const client = new OpenAI({ baseURL: `${cp.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
  const big = Array.from({ length: 11 }, (_, i) => `big input ${i}`);
  const [r, small] = await Promise.all([
    client.embeddings.create({ model: 'm', input: big, encoding_format: 'float' }),
    client.embeddings.create({ model: 'm', input: 'small one', encoding_format: 'float' }),
  ]);
  assert.equal(r.data.length, 11);
  r.data.forEach((d, k) => {
    assert.equal(d.index, k);
    assert.ok(close(d.embedding, embedding(big[k])), `input ${k}`);
  });
  assert.equal(r.usage.prompt_tokens, big.reduce((a, s) => a + ptoks(s), 0));
  assert.ok(close(small.data[0].embedding, embedding('small one')));
  const st = await sim.stats();
  assert.ok(st.max_prompts_per_call <= 4, `a call carried ${st.max_prompts_per_call} inputs`);
  assert.ok(st.embedding_calls >= 3);
});

test('max_tokens_per_call: no call carries more (estimated) input tokens than the limit', async (t) => {
  const sim = await startSim(['--step-ms', '5']);
  // each input below is 16 bytes: 4 estimated tokens; a limit of 10 tokens allows 2 inputs per call
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 30 },
    upstream: { max_tokens_per_call: 10 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const inputs = Array.from({ length: 7 }, (_, i) => `token limits ${String(i).padStart(3, "0")}`);
  assert.ok(inputs.every((s) => Buffer.byteLength(s) === 16));
  const [whole, ...singles] = await Promise.all([
    request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input: inputs }),
    ...inputs.map((s) => request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input: s })),
  ]);
  const j = JSON.parse(whole.body);
  assertEmbeddings(j.data, inputs, 'the whole request');
  assert.equal(singles.length, inputs.length);
  singles.forEach((r, k) => assertEmbeddings(JSON.parse(r.body).data, [inputs[k]], `single ${k}`));
  assert.ok((await sim.stats()).max_prompts_per_call <= 2);
});

test('one invalid input fails only its own client', async (t) => {
  const sim = await startSim(['--step-ms', '5']);
  const cp = await startCarpool(baseConfig(sim, { batching: { policy: 'fixed', max_wait_ms: 50 } }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const inputs = ['ok 1', 'ok 2', 'INVALID here', 'ok 3', 'ok 4'];
  const res = await Promise.all(inputs.map((input) => request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input })));
  res.forEach((r, i) => {
    if (i === 2) {
      assert.equal(r.status, 400);
      assert.ok(JSON.parse(r.body).error.message);
    } else {
      assert.equal(r.status, 200, r.body);
      assert.ok(close(JSON.parse(r.body).data[0].embedding, embedding(inputs[i])));
    }
  });
  const bad = await request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input: [] });
  assert.equal(bad.status, 400);
  assert.equal(JSON.parse(bad.body).error.param, 'input');
  const badfmt = await request(cp.port, 'POST', '/v1/embeddings', { model: 'm', input: 'x', encoding_format: 'hex' });
  assert.equal(badfmt.status, 400);
});
