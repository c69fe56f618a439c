// A pool of upstreams: least-loaded routing, failover when one dies, 429 with Retry-After, ejection.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startSim, startCarpool, request, parseSse, collect } = require('./lib');
const { expected } = require('./simgen');

function poolConfig(urls, extra = {}) {
  return {
    workers: 1,
    listen: [{ address: '127.0.0.1:0' }],
    upstreams: urls.map((url) => ({ url, dialect: 'vllm', max_inflight: 2, ...(extra.upstream || {}) })),
    batching: { policy: 'fixed', max_wait_ms: 20, max_batch_size: 8 },
    timeouts: { connect_ms: 500, first_byte_ms: 5000, idle_ms: 5000 },
    log: { level: 'info' },
  };
}

test('two upstreams share the load; one killed mid-run: unanswered calls move, nothing lost or duplicated', async (t) => {
  const a = await startSim(['--dialect', 'vllm', '--step-ms', '30']);
  const b = await startSim(['--dialect', 'vllm', '--step-ms', '30']);
  const cp = await startCarpool(poolConfig([a.url, b.url]));
  t.after(async () => { await cp.stop(); await a.kill(); await b.kill(); });
  const N = 64;
  const started = Date.now();
  const reqs = Array.from({ length: N }, (_, i) => request(cp.port, 'POST', '/v1/completions',
    { model: 'm', prompt: `pool ${i}`, max_tokens: 16, stream: i % 4 === 0 }, {}, { timeoutMs: 30000 }));
  setTimeout(() => a.kill('SIGKILL'), 150);
  const res = await Promise.all(reqs);
  let moved = 0;
  let streamErrors = 0;
  res.forEach((r, i) => {
    const want = expected(`pool ${i}`, { maxTokens: 16 });
    if (i % 4 === 0) {
      assert.equal(r.status, 200, `stream ${i}: ${r.body}`);
      const got = collect(parseSse(r.body));
      const text = got.text[0] || '';
      assert.ok(want.text.startsWith(text), `stream ${i} got text that is not its own prefix: ${text}`);
      if (got.errors.length) streamErrors++;
      else assert.equal(text, want.text, `stream ${i}`);
      assert.equal(got.done, 1);
    } else {
      assert.equal(r.status, 200, `request ${i}: ${r.body}`);
      assert.equal(JSON.parse(r.body).choices[0].text, want.text, `request ${i}`);
    }
  });
  const sb = await b.stats();
  assert.ok(sb.completion_calls > 0, 'the surviving upstream took calls');
  const m = await cp.metrics();
  moved = m.carpool_retries_total;
  t.diagnostic(`${Date.now() - started} ms; retries/moves ${moved}; streams ended by the failure ${streamErrors}; B calls ${sb.completion_calls}`);
  // Every non-stream client got its exact answer even though A died under it.
  // Afterwards new work goes to B only.
  const after = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'after the kill', max_tokens: 4 });
  assert.equal(JSON.parse(after.body).choices[0].text, expected('after the kill', { maxTokens: 4 }).text);
});

test('upstream 429 with Retry-After: that upstream backs off, the call is retried, the client never sees it', async (t) => {
  let posts = 0;
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      if (req.method === 'GET') { res.writeHead(200, { 'Content-Type': 'application/json' }); res.end('{"data":[]}'); return; }
      posts++;
      if (posts === 1) {
        res.writeHead(429, { 'Content-Type': 'application/json', 'Retry-After': '1' });
        res.end(JSON.stringify({ error: { message: 'Rate limit reached', type: 'requests', param: null, code: 'rate_limit_exceeded' } }));
        return;
      }
      const j = JSON.parse(body);
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      j.prompt.forEach((p, idx) => {
        const e = expected(p, { maxTokens: j.max_tokens });
        e.tokens.forEach((tok, k) => res.write(`data: ${JSON.stringify({ id: 'x', object: 'text_completion', created: 1, model: 'm',
          choices: [{ index: idx, text: tok, logprobs: null, finish_reason: k === e.tokens.length - 1 ? e.finish_reason : null }] })}\n\n`));
      });
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const cp = await startCarpool(poolConfig([`http://127.0.0.1:${server.address().port}`], { upstream: { dialect: 'openai' } }));
  t.after(async () => { await cp.stop(); server.close(); });
  const t0 = Date.now();
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'rate limited', max_tokens: 5 });
  assert.equal(r.status, 200, r.body);
  assert.equal(JSON.parse(r.body).choices[0].text, expected('rate limited', { maxTokens: 5 }).text);
  assert.ok(Date.now() - t0 >= 900, 'waited for Retry-After');
  assert.equal(posts, 2);
});

test('a dead upstream is ejected; /v1/models answers the union of the live ones', async (t) => {
  const a = await startSim(['--step-ms', '2']);
  const b = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(poolConfig([a.url, b.url], { upstream: { health_path: '/health', health_interval_ms: 200 } }));
  t.after(async () => { await cp.stop(); await a.kill(); await b.kill(); });
  const models = JSON.parse((await request(cp.port, 'GET', '/v1/models')).body);
  assert.equal(models.data.length, 1, 'the same model id from both, once');
  await a.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 1500));
  assert.match(cp.log(), /ejected/);
  const res = await Promise.all(Array.from({ length: 10 }, (_, i) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: `eject ${i}`, max_tokens: 3 })));
  res.forEach((r, i) => assert.equal(JSON.parse(r.body).choices[0].text, expected(`eject ${i}`, { maxTokens: 3 }).text));
  assert.equal((await request(cp.port, 'GET', '/readyz')).status, 200);
});
