// The write path: whatever reaches carpool for a client in one loop turn leaves in one write.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startCarpool, baseConfig, request, parseSse, collect } = require('./lib');

// An OpenAI-dialect upstream that sends a whole streamed answer (20 events for each prompt, step by
// step, and [DONE]) in one write. A call of several prompts numbers prompt p's choice p and marks its
// text with the prompt; calls counts the calls.
async function burstUpstream() {
  const up = { calls: 0 };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      if (req.method === 'POST') up.calls++;
      const prompt = body ? JSON.parse(body).prompt : '';
      const prompts = Array.isArray(prompt) ? prompt : [prompt];
      let out = '';
      for (let i = 0; i < 20; i++) {
        const choices = prompts.map((pr, p) => ({
          index: p, text: prompts.length > 1 ? `${pr}/t${i} ` : `t${i} `, logprobs: null, finish_reason: i === 19 ? 'length' : null,
        }));
        for (const ch of choices)
          out += `data: ${JSON.stringify({ id: 'cmpl-1', object: 'text_completion', created: 1, model: 'm', choices: [ch] })}\n\n`;
      }
      out += 'data: [DONE]\n\n';
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.end(out);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return Object.assign(up, {
    url: `http://127.0.0.1:${srv.address().port}`,
    close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }),
  });
}

test('events that arrive together reach the client in one write, head included', async (t) => {
  const up = await burstUpstream();
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, batching: { policy: 'adaptive' } }));
  t.after(async () => { await cp.stop(); await up.close(); });
  const before = (await cp.metrics()).carpool_client_writes_total;
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'burst', max_tokens: 20, stream: true });
  assert.equal(r.status, 200);
  const got = collect(parseSse(r.body));
  assert.equal(got.text[0], Array.from({ length: 20 }, (_, i) => `t${i} `).join(''));
  assert.equal(got.done, 1);
  // the /metrics answer that reads the counter is itself one write; it is counted before it is sent
  const writes = (await cp.metrics()).carpool_client_writes_total - before - 1;
  t.diagnostic(`21 events, ${writes} write(s)`);
  // one write if the upstream's bytes came in one read; a second if the kernel split them
  assert.ok(writes >= 1 && writes <= 2, `${writes} writes for 21 events`);
});

// A batched call's whole answer (16 clients x 20 events, about 60 KB) arriving at once is read in one
// go and each client gets its part in one write, not one write per 4 KB read (libevent's own read
// size, which made it one write per token: each 4 KB carried about one event for each client).
test('a batched answer that arrives at once costs each client one write, not one per token', async (t) => {
  const up = await burstUpstream();
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, batching: { policy: 'fixed', max_wait_ms: 200 } }));
  t.after(async () => { await cp.stop(); await up.close(); });
  const before = (await cp.metrics()).carpool_client_writes_total;
  const k = 16;
  const prompts = Array.from({ length: k }, (_, i) => `client${i}`);
  const rs = await Promise.all(prompts.map((prompt) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt, max_tokens: 20, stream: true })));
  assert.equal(up.calls, 1, 'the 16 requests shared one call');
  for (const [i, r] of rs.entries()) {
    assert.equal(r.status, 200);
    const got = collect(parseSse(r.body));
    assert.equal(got.text[0], Array.from({ length: 20 }, (_, s) => `${prompts[i]}/t${s} `).join(''));
    assert.equal(got.done, 1);
  }
  const writes = (await cp.metrics()).carpool_client_writes_total - before - 1;
  t.diagnostic(`${k} clients x 21 events, ${writes} writes`);
  // one each, a few more if the kernel handed the upstream's bytes over in pieces
  assert.ok(writes >= k && writes <= 2 * k, `${writes} writes for ${k} clients of 21 events each`);
});
