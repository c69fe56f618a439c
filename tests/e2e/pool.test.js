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
  // Once A has its two calls (max_inflight 2) and they have streamed a step or two, A is killed
  // mid-stream: a call lasts as long as its longest prompt (16 steps of 30 ms), though its short
  // prompts may be done. A's request log, read just before the kill, says which prompts were on it.
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 500 && (await a.stats()).inflight < 2; i++) await sleep(10);
  await sleep(70);
  const sa = await a.stats();
  await a.kill('SIGKILL');
  const res = await Promise.all(reqs);
  const onA = sa.requests.filter((e) => e.path === '/v1/completions');
  assert.equal(sa.inflight, onA.length, 'all of A\'s calls were still in flight at the kill');
  assert.ok(onA.length > 0, 'A had calls when it was killed');
  const promptsOnA = new Set(onA.flatMap((e) => e.prompts));
  const cut = [];
  res.forEach((r, i) => {
    const want = expected(`pool ${i}`, { maxTokens: 16 });
    if (i % 4 === 0) {
      assert.equal(r.status, 200, `stream ${i}: ${r.body}`);
      const got = collect(parseSse(r.body));
      const text = got.text[0] || '';
      if (got.errors.length) {
        cut.push(`pool ${i}`);
        assert.ok(text.length > 0 && want.text.startsWith(text), `a cut stream ${i} got its own output first: "${text}"`);
      } else {
        assert.equal(text, want.text, `stream ${i}`);
      }
      assert.equal(got.done, 1);
    } else {
      assert.equal(r.status, 200, `request ${i}: ${r.body}`);
      assert.equal(JSON.parse(r.body).choices[0].text, want.text, `request ${i}`);
    }
  });
  // Only streams of A that had output from it end in an error; A's other clients finished on A or
  // moved to B. Nothing reaches B twice, and B answered everything A never had.
  for (const p of cut) assert.ok(promptsOnA.has(p), `${p} was cut but never was on A`);
  const sb = await b.stats();
  const promptsOnB = sb.requests.filter((e) => e.path === '/v1/completions').flatMap((e) => e.prompts);
  const seenOnB = new Set(promptsOnB);
  assert.equal(seenOnB.size, promptsOnB.length, 'nothing duplicated: no prompt reached B twice');
  for (let i = 0; i < N; i++) {
    if (!promptsOnA.has(`pool ${i}`)) assert.ok(seenOnB.has(`pool ${i}`), `pool ${i} was never on A, so B answered it`);
  }
  const m = await cp.metrics();
  t.diagnostic(`${Date.now() - started} ms; A calls at the kill ${onA.length}; retries ${m.carpool_retries_total}; streams cut ${cut.length}; B calls ${sb.completion_calls}`);
  // Each call A broke moves its clients without bytes once; later sends to the dead A (before and
  // after its ejection) fail on connect and are retried: the metric counts exactly these, as logged.
  const moves = (cp.log().match(/broke mid-stream; \d+ clients that had no bytes yet move/g) || []).length;
  const resent = (cp.log().match(/before any byte reached a client; retry \d/g) || []).length;
  assert.equal(moves, onA.length, 'one move for each call A broke');
  assert.equal(m.carpool_retries_total, moves + resent, `carpool_retries_total counts every retry (${moves} moves, ${resent} resends)`);
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
