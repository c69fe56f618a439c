// What carpool says is true: its own 502 / 504 name the upstream, and a retry's log line says the
// wait it really takes (issue 11 items 11 and 14). Drain counts: relay_faults.test.js.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startCarpool, baseConfig, request, parseSse, collect, freePort } = require('./lib');

// An OpenAI-dialect upstream: its first `refuse` completion calls get 503 without Retry-After, the
// others a one-event stream; with `silent`, it accepts calls and never answers.
async function upstream({ refuse = 0, silent = false } = {}) {
  const calls = [];
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url !== '/v1/completions') return res.writeHead(404).end();
      calls.push(Date.now());
      if (silent) return;
      if (calls.length <= refuse) {
        res.writeHead(503, { 'Content-Type': 'application/json' });
        return res.end('{"error":{"message":"busy","type":"server_error"}}');
      }
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.end('data: {"id":"c1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}\n\ndata: [DONE]\n\n');
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return { url, calls, close: () => { srv.closeAllConnections(); return new Promise((r) => srv.close(r)); } };
}

test('carpool\'s own 502 and 504 name the upstream, on batched calls and on pass-through', async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`;
  const cp = await startCarpool(baseConfig({ url }, { upstream: { dialect: 'openai' } }));
  t.after(() => cp.stop());
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'down', max_tokens: 3 });
  assert.equal(r.status, 502);
  assert.equal(JSON.parse(r.body).error.message, `carpool could not get an answer from the upstream ${url} (connect)`);
  const p = await request(cp.port, 'POST', '/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'hi' }] });
  assert.equal(p.status, 502);
  assert.equal(JSON.parse(p.body).error.message, `carpool could not get an answer from the upstream ${url} (connect)`);

  const up = await upstream({ silent: true });
  const cp2 = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, timeouts: { first_byte_ms: 300 } }));
  t.after(async () => { await cp2.stop(); await up.close(); });
  const s = await request(cp2.port, 'POST', '/v1/completions', { model: 'm', prompt: 'silent', max_tokens: 3 });
  assert.equal(s.status, 504, s.body);
  assert.equal(JSON.parse(s.body).error.message, `carpool could not get an answer from the upstream ${up.url} (first_byte_timeout)`);
});

test('a retry held by the upstream\'s backoff says the wait it takes, not the retry step', async (t) => {
  const up = await upstream({ refuse: 1 });
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, batching: { policy: 'fixed', max_wait_ms: 5 } }));
  t.after(async () => { await cp.stop(); await up.close(); });
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'once refused', max_tokens: 3, stream: true });
  assert.equal(r.status, 200, r.body);
  assert.equal(collect(parseSse(r.body)).text[0], 'ok');
  assert.equal(up.calls.length, 2);
  const gap = up.calls[1] - up.calls[0];
  const m = cp.log().match(/retry 1 in (\d+) ms, when its backoff ends/);
  assert.ok(m, cp.log());
  const said = Number(m[1]);
  t.diagnostic(`said ${said} ms, the retry came ${gap} ms after the refusal`);
  // a 503 without Retry-After backs the upstream off for 1 s: the retry step (100 ms) is not the wait
  assert.ok(said >= 900 && said <= 1000, `said ${said} ms`);
  assert.ok(gap >= said - 50, `the retry came ${gap} ms after the refusal, ${said} ms were said`);
});
