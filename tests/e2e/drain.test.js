// The drain deadline (issue 9, defect 8): on SIGTERM open requests get timeouts.drain_ms to finish;
// then each ends properly - a stream with an SSE error event and [DONE] and a clean chunked end, a
// request not yet answered with a 503 error JSON - never a cut stream or an empty reply.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, startSim, startCarpool, baseConfig, parseSse, collect } = require('./lib');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A request whose outcome is recorded whole: status, body, and whether the response ended cleanly.
function call(port, body, onFirstByte) {
  return new Promise((resolve) => {
    const data = JSON.stringify(body);
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', agent: false,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      let aborted = false;
      res.on('data', (d) => { if (!text && onFirstByte) onFirstByte(); text += d; });
      res.on('aborted', () => { aborted = true; });
      res.on('error', () => { aborted = true; });
      res.on('close', () => resolve({ status: res.statusCode, body: text, complete: res.complete && !aborted }));
    });
    req.on('error', (e) => resolve({ status: 0, body: String(e), complete: false }));
    req.end(data);
  });
}

test('SIGTERM past timeouts.drain_ms: streams end with an error event and [DONE], waiting requests get 503', { timeout: 30000 }, async () => {
  const sim = await startSim(['--step-ms', '200']);
  const cp = await startCarpool(baseConfig(sim, { timeouts: { drain_ms: 1000 } }));
  let streaming;
  const started = new Promise((r) => { streaming = r; });
  const stream = call(cp.port, { model: 'sim-model', prompt: 'drain stream', max_tokens: 100, stream: true }, streaming);
  const whole = call(cp.port, { model: 'sim-model', prompt: 'drain whole', max_tokens: 100 });
  await started;
  await sleep(300);
  const t0 = Date.now();
  await cp.stop(); // SIGTERM; asserts exit 0 and a clean log
  const took = Date.now() - t0;
  const [s, w] = await Promise.all([stream, whole]);
  assert.ok(took >= 900 && took < 5000, `exit after ${took} ms`);
  assert.equal(s.status, 200);
  assert.ok(s.complete, `the stream was cut: ${s.body.slice(-300)}`);
  const got = collect(parseSse(s.body));
  assert.equal(got.errors.length, 1, s.body.slice(-500));
  assert.match(got.errors[0].error.message, /drain deadline/);
  assert.equal(got.done, 1);
  assert.ok(Object.values(got.text).join('').length > 0, 'tokens before the deadline');
  assert.equal(w.status, 503, w.body);
  assert.ok(w.complete);
  assert.match(JSON.parse(w.body).error.message, /shutting down/);
  await sim.kill();
});
