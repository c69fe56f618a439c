// The write path: whatever reaches carpool for a client in one loop turn leaves in one write.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startCarpool, baseConfig, request, parseSse, collect } = require('./lib');

// An OpenAI-dialect upstream that sends a whole streamed answer (20 events and [DONE]) in one write.
async function burstUpstream() {
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      let out = '';
      for (let i = 0; i < 20; i++) {
        const ch = { index: 0, text: `t${i} `, logprobs: null, finish_reason: i === 19 ? 'length' : null };
        out += `data: ${JSON.stringify({ id: 'cmpl-1', object: 'text_completion', created: 1, model: 'm', choices: [ch] })}\n\n`;
      }
      out += 'data: [DONE]\n\n';
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.end(out);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }) };
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
