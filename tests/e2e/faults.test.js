// Faults: upstreams that die, crash, error mid-stream, refuse, hang or never existed; clients that
// leave or read too slowly. Nobody may hang, see another client's text, or take carpool down.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, postUpstream } = require('./lib');
const { expected } = require('./simgen');

let uniq = 0;
// A unique prompt whose natural length (max_tokens 16) is at least minLen tokens.
function longPrompt(tag, minLen = 12) {
  for (;;) {
    uniq++;
    const p = `faults ${tag} #${uniq} pid${process.pid}`;
    if (expected(p, { maxTokens: 16 }).tokens.length >= minLen) return p;
  }
}

// A streaming (or not) completion request with a hard timeout; never rejects.
// onData(out, req) is called after each body chunk.
function call(port, body, { timeoutMs = 10000, onData } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const data = JSON.stringify(body);
    const agent = new http.Agent({ keepAlive: false });
    const out = { status: 0, headers: {}, body: '', ended: false, error: null, timedOut: false, ms: 0, chunks: 0 };
    let settled = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      out.ms = Date.now() - t0;
      agent.destroy();
      resolve(out);
    };
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      out.status = res.statusCode;
      out.headers = res.headers;
      res.on('data', (c) => {
        out.body += c;
        out.chunks++;
        if (onData) onData(out, req);
      });
      res.on('end', () => { out.ended = true; finish(); });
      res.on('error', (e) => { out.error = out.error || e; });
      res.on('close', finish);
    });
    const timer = setTimeout(() => { out.timedOut = true; req.destroy(new Error('client timeout')); }, timeoutMs);
    req.on('error', (e) => { out.error = out.error || e; finish(); });
    req.end(data);
  });
}

// strict: the full OpenAI shape carpool itself produces. Not strict: an upstream's own error body,
// which carpool forwards as it came (contract 2), so param/code are there only if the upstream sent them.
// Runs fn; on failure adds carpool's log to the message.
function withLog(cp, fn) {
  try {
    return fn();
  } catch (e) {
    e.message += `\n--- carpool log (tail) ---\n${cp.log().slice(-3000)}`;
    throw e;
  }
}

function assertErrorJson(r, statusCheck, { strict = true } = {}) {
  statusCheck(r.status);
  assert.match(String(r.headers['content-type']), /^application\/json/, r.body);
  const j = JSON.parse(r.body);
  assert.ok(j.error && typeof j.error === 'object', r.body);
  assert.equal(typeof j.error.message, 'string');
  assert.ok(j.error.message.length > 0);
  assert.equal(typeof j.error.type, 'string');
  if (strict) {
    assert.ok('param' in j.error, r.body);
    assert.ok('code' in j.error, r.body);
  }
  return j;
}

// A stream that was cut by an upstream failure: 200, some of its own tokens, an error event, the end.
function assertCutStream(r, prompt, { maxTokens = 16, needData = true } = {}) {
  assert.ok(!r.timedOut, `client hung (${prompt}): ${r.body}`);
  assert.equal(r.status, 200, r.body);
  assert.ok(r.ended, `response did not end cleanly (${r.error}): ${r.body}`);
  const evs = parseSse(r.body);
  const out = collect(evs);
  const want = expected(prompt, { maxTokens });
  const got = out.text[0] || '';
  assert.ok(Object.keys(out.text).every((k) => k === '0'), `unexpected indexes: ${Object.keys(out.text)}`);
  if (needData) assert.ok(out.chunks.length > 0 && got.length > 0, `no data before the error: ${r.body}`);
  assert.ok(want.text.startsWith(got), `client got text that is not its own:\n got ${got}\nwant ${want.text}`);
  assert.ok(out.errors.length >= 1, `no error event: ${r.body}`);
  const last = evs.filter((e) => e.data !== '[DONE]').pop();
  const lj = JSON.parse(last.data);
  assert.ok(lj.error && typeof lj.error.message === 'string' && lj.error.message, `last event is not an error: ${last.data}`);
  return { out, error: lj.error, evs };
}

test('(a) upstream killed mid-stream: every client gets data, an error event and the end', async (t) => {
  const sim = await startSim(['--step-ms', '50']);
  t.after(() => sim.kill('SIGKILL'));
  const cp = await startCarpool(baseConfig(sim, { upstream: { dialect: 'vllm' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const prompts = Array.from({ length: 10 }, (_, i) => longPrompt(`kill-${i}`, 12));
  const pending = prompts.map((p) => call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true }));
  await new Promise((r) => setTimeout(r, 250));
  await sim.kill('SIGKILL');
  const results = await Promise.all(pending);
  withLog(cp, () => results.forEach((r, i) => assertCutStream(r, prompts[i])));
  // the upstream is gone now: connection refused -> a quick 502
  const t0 = Date.now();
  const r = await call(cp.port, { model: 'sim-model', prompt: longPrompt('after-kill'), max_tokens: 4 }, { timeoutMs: 10000 });
  assert.ok(!r.timedOut, 'request after the kill hung');
  assertErrorJson(r, (s) => assert.equal(s, 502, r.body));
  assert.ok(Date.now() - t0 < 3000, `502 took ${Date.now() - t0} ms`);
  const rs = await call(cp.port, { model: 'sim-model', prompt: longPrompt('after-kill-s'), max_tokens: 4, stream: true });
  assertErrorJson(rs, (s) => assert.equal(s, 502, rs.body));
  await cp.stop();
});

test('(b) CRASH prompt: every member of the call ends with an error event, nothing hangs', async (t) => {
  const sim = await startSim(['--step-ms', '10']);
  t.after(() => sim.kill());
  const cp = await startCarpool(baseConfig(sim, { upstream: { dialect: 'vllm' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const prompts = [longPrompt('crash-a', 6), `${longPrompt('crash-b', 6)} CRASH`, longPrompt('crash-c', 6), longPrompt('crash-d', 6)];
  const results = await Promise.all(prompts.map((p) => call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true })));
  const st = await sim.stats();
  assert.equal(st.completion_calls, 1, `expected one batched call, got ${JSON.stringify(st)}`);
  withLog(cp, () => results.forEach((r, i) => assertCutStream(r, prompts[i])));
  // carpool keeps serving
  const p = longPrompt('after-crash', 3);
  const ok = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: p, max_tokens: 6 });
  assert.equal(ok.status, 200, ok.body);
  assert.equal(JSON.parse(ok.body).choices[0].text, expected(p, { maxTokens: 6 }).text);
  await cp.stop();
});

test('(c) MIDERR (vllm dialect): every member ends with the upstream error event', async (t) => {
  const sim = await startSim(['--dialect', 'vllm', '--step-ms', '10']);
  t.after(() => sim.kill());
  const cp = await startCarpool(baseConfig(sim, { upstream: { dialect: 'vllm' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const prompts = [longPrompt('miderr-a', 6), `${longPrompt('miderr-b', 6)} MIDERR`, longPrompt('miderr-c', 6)];
  const results = await Promise.all(prompts.map((p) => call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true })));
  const st = await sim.stats();
  assert.equal(st.completion_calls, 1, JSON.stringify(st));
  const errs = results.map((r, i) => {
    const { error, out } = assertCutStream(r, prompts[i]);
    assert.equal(out.done, 1, `no [DONE] after the error: ${r.body}`);
    return error;
  });
  for (const e of errs) {
    assert.equal(e.type, 'server_error', JSON.stringify(e));
    assert.deepEqual(e, errs[0], 'members got different upstream errors');
  }
  await cp.stop();
});

test('(d) a client that disconnects mid-stream leaves its batch; the others complete exactly', async (t) => {
  const sim = await startSim(['--step-ms', '20']);
  t.after(() => sim.kill());
  const cp = await startCarpool(baseConfig(sim, { upstream: { dialect: 'vllm' }, batching: { policy: 'fixed', max_wait_ms: 50 } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const gone0 = (await cp.metrics()).carpool_clients_gone_total;
  assert.equal(typeof gone0, 'number');
  const prompts = [longPrompt('dc-a', 3), longPrompt('dc-leaver', 12), longPrompt('dc-c', 3)];
  const results = await Promise.all(prompts.map((p, i) => call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true }, {
    onData: i === 1 ? (out, req) => { if (out.body.includes('data: {')) req.destroy(); } : undefined,
  })));
  const st = await sim.stats();
  assert.equal(st.completion_calls, 1, JSON.stringify(st));
  for (const i of [0, 2]) {
    const r = results[i];
    assert.equal(r.status, 200);
    assert.ok(r.ended && !r.timedOut, r.body);
    const out = collect(parseSse(r.body));
    const want = expected(prompts[i], { maxTokens: 16 });
    assert.equal(out.errors.length, 0, r.body);
    assert.equal(out.done, 1);
    assert.deepEqual(Object.keys(out.text), ['0']);
    assert.equal(out.text[0], want.text);
    assert.equal(out.finish[0], want.finish_reason);
  }
  assert.ok(!results[1].ended, 'the leaver should not have completed');
  let gone1 = gone0;
  for (let k = 0; k < 40 && gone1 <= gone0; k++) {
    await new Promise((r) => setTimeout(r, 50));
    gone1 = (await cp.metrics()).carpool_clients_gone_total;
  }
  assert.ok(gone1 > gone0, `carpool_clients_gone_total did not increase (${gone0} -> ${gone1})`);

  // every client of one call leaves: the upstream call is cancelled
  const disc0 = (await sim.stats()).disconnects;
  const calls0 = (await sim.stats()).completion_calls;
  const leavers = [longPrompt('dc-all-1', 14), longPrompt('dc-all-2', 14)];
  const lr = await Promise.all(leavers.map((p) => call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true }, {
    onData: (out, req) => { if (out.body.includes('data: {')) req.destroy(); },
  })));
  for (const r of lr) assert.ok(!r.ended && !r.timedOut);
  let s = await sim.stats();
  for (let k = 0; k < 40 && s.disconnects <= disc0; k++) {
    await new Promise((r) => setTimeout(r, 50));
    s = await sim.stats();
  }
  assert.equal(s.completion_calls, calls0 + 1, JSON.stringify(s));
  assert.ok(s.disconnects > disc0, `the upstream call was not cancelled: ${JSON.stringify(s)}`);
  assert.match(cp.log(), /every client left; cancelling the upstream call/);
  // and carpool keeps serving
  const p = longPrompt('dc-after', 3);
  const r = await call(cp.port, { model: 'sim-model', prompt: p, max_tokens: 16, stream: true });
  assert.equal(r.status, 200);
  assert.equal(collect(parseSse(r.body)).text[0], expected(p, { maxTokens: 16 }).text);
  await cp.stop();
});

test('(e) upstream unreachable (closed port) -> 502 with an error JSON, quickly', async (t) => {
  const dead = await startSim();
  const url = dead.url;
  await dead.kill('SIGKILL');
  const cp = await startCarpool(baseConfig({ url }, { upstream: { dialect: 'vllm' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  for (const stream of [false, true]) {
    const r = await call(cp.port, { model: 'sim-model', prompt: longPrompt(`unreach-${stream}`), max_tokens: 4, stream });
    assert.ok(!r.timedOut, 'hung');
    assertErrorJson(r, (s) => assert.equal(s, 502, r.body));
    assert.ok(r.ms < 3000, `502 took ${r.ms} ms`);
  }
  await cp.stop();
});

test('(e) upstream black hole (accepts, never answers), first_byte_ms 500 -> 504 soon after 500 ms', async (t) => {
  const socks = new Set();
  const hole = net.createServer((s) => { socks.add(s); s.on('error', () => {}); s.on('close', () => socks.delete(s)); });
  await new Promise((r) => hole.listen(0, '127.0.0.1', r));
  t.after(() => { for (const s of socks) s.destroy(); hole.close(); });
  const url = `http://127.0.0.1:${hole.address().port}`;
  const cp = await startCarpool(baseConfig({ url }, { upstream: { dialect: 'vllm' }, timeouts: { first_byte_ms: 500 } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const rs = await Promise.all([false, true].map((stream) =>
    call(cp.port, { model: 'sim-model', prompt: longPrompt(`hole-${stream}`), max_tokens: 4, stream }, { timeoutMs: 8000 })));
  for (const r of rs) {
    assert.ok(!r.timedOut, 'hung');
    assertErrorJson(r, (s) => assert.equal(s, 504, r.body));
    assert.ok(r.ms >= 450, `504 came too early (${r.ms} ms)`);
    // first_byte_ms is 500; allow generous slack but not the 2 s connect timeout
    assert.ok(r.ms < 1500, `504 took ${r.ms} ms with first_byte_ms 500`);
  }
  await cp.stop();
});

test('(e) upstream black hole with connect_ms below first_byte_ms -> 504 in ~first_byte_ms', async (t) => {
  const socks = new Set();
  const hole = net.createServer((s) => { socks.add(s); s.on('error', () => {}); s.on('close', () => socks.delete(s)); });
  await new Promise((r) => hole.listen(0, '127.0.0.1', r));
  t.after(() => { for (const s of socks) s.destroy(); hole.close(); });
  const url = `http://127.0.0.1:${hole.address().port}`;
  const cp = await startCarpool(baseConfig({ url }, { upstream: { dialect: 'vllm' }, timeouts: { connect_ms: 200, first_byte_ms: 500 } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const r = await call(cp.port, { model: 'sim-model', prompt: longPrompt('hole2'), max_tokens: 4, stream: true }, { timeoutMs: 8000 });
  assert.ok(!r.timedOut, 'hung');
  assertErrorJson(r, (s) => assert.equal(s, 504, r.body));
  assert.ok(r.ms >= 450 && r.ms < 2000, `504 took ${r.ms} ms`);
  await cp.stop();
});

// A fake upstream that answers every POST with `status`, an error JSON and Retry-After.
async function refusingUpstream(status, message, retryAfter) {
  return postUpstream(() => ({
    status,
    headers: { 'Content-Type': 'application/json', 'Retry-After': String(retryAfter) },
    body: JSON.stringify({ error: { message: message, type: status >= 500 ? 'server_error' : 'rate_limit_error' } }),
  }));
}

// Five clients at once (streaming or not: `stream` does not split a batch). carpool may retry a
// refused call itself before any byte reached a client (contract 11), honouring Retry-After, but a
// batch must cost a bounded number of upstream calls, never one per client.
async function refusedBatch(cp, up, tag) {
  const before = up.seen.length;
  const bodies = [0, 1, 2, 3, 4].map((i) => ({ model: 'sim-model', prompt: longPrompt(`${tag}-${i}`), max_tokens: 4, stream: i % 2 === 1 }));
  const rs = await Promise.all(bodies.map((b) => call(cp.port, b, { timeoutMs: 25000 })));
  const calls = up.seen.slice(before).map((x) => JSON.parse(x));
  return { rs, calls };
}

test('(f) upstream 503 with Retry-After: 7 -> the client gets an error status >= 500 and an error JSON', async (t) => {
  const up = await refusingUpstream(503, 'overloaded', 7);
  t.after(() => up.close());
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const { rs, calls } = await refusedBatch(cp, up, '503');
  for (const r of rs) {
    assert.ok(!r.timedOut, `hung (${r.ms} ms)`);
    const j = assertErrorJson(r, (s) => assert.ok(s >= 500 && s < 600, `status ${s}: ${r.body}`), { strict: false });
    if (r.status === 503) assert.equal(j.error.message, 'overloaded');
  }
  t.diagnostic(`503: statuses ${rs.map((r) => r.status)}, ${calls.length} upstream calls, answered after ${Math.max(...rs.map((r) => r.ms))} ms, retry-after ${rs[0].headers['retry-after']}`);
  assert.ok(calls.length >= 1 && calls.length <= 3, `${calls.length} upstream calls for one batch of 5`);
  assert.equal(calls[0].prompt.length, 5, 'the five clients were not batched');
  await cp.stop();
});

test('(f) upstream 429 with Retry-After -> the client gets 429 and the Retry-After header', async (t) => {
  const up = await refusingUpstream(429, 'slow down', 2);
  t.after(() => up.close());
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const { rs, calls } = await refusedBatch(cp, up, '429');
  for (const r of rs) {
    assert.ok(!r.timedOut, `hung (${r.ms} ms)`);
    const j = assertErrorJson(r, (s) => assert.equal(s, 429, r.body), { strict: false });
    assert.equal(j.error.message, 'slow down');
    assert.ok(r.headers['retry-after'], 'no Retry-After header');
    assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After ${r.headers['retry-after']}`);
  }
  t.diagnostic(`429: ${calls.length} upstream calls, answered after ${Math.max(...rs.map((r) => r.ms))} ms, retry-after ${rs[0].headers['retry-after']}`);
  assert.ok(calls.length >= 1 && calls.length <= 3, `${calls.length} upstream calls for one batch of 5`);
  assert.equal(calls[0].prompt.length, 5, 'the five clients were not batched');
  await cp.stop();
});

test('(g) a slow reader is cut off at max_client_buffer; its batch-mate completes; carpool survives', async (t) => {
  const sim = await startSim(['--step-ms', '0']);
  t.after(() => sim.kill());
  const cp = await startCarpool(baseConfig(sim, {
    upstream: { dialect: 'vllm' },
    batching: { policy: 'fixed', max_wait_ms: 100, max_batch_size: 64 },
    limits: { max_client_buffer: 65536 },
  }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const N = 64;
  // The slow client asks for a lot: 32 prompts x n=64 x up to 16 tokens (megabytes of SSE), so that
  // the kernel's socket buffers cannot absorb it all and carpool's own buffer must pass the bound.
  const slowPrompts = Array.from({ length: 32 }, (_, i) => `faults slow ${i} pid${process.pid}`);
  const slowBody = JSON.stringify({ model: 'sim-model', prompt: slowPrompts, n: N, max_tokens: 16, stream: true });
  // The slow client is a socket with a tiny receive buffer that never reads (python3's socket
  // module can set SO_RCVBUF before connecting; node's net cannot).
  const { spawn } = require('node:child_process');
  const slowProc = spawn('python3', ['-c', `
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", ${cp.port}))
body = sys.stdin.buffer.read()
s.sendall(b"POST /v1/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
print("sent", flush=True)
time.sleep(30)
`], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => slowProc.kill('SIGKILL'));
  slowProc.stdin.end(slowBody);
  await new Promise((r) => slowProc.stdout.once('data', r));
  const slowBytes = 0;
  const p = `faults fast reader pid${process.pid}`;
  const fast = await call(cp.port, { model: 'sim-model', prompt: p, n: N, max_tokens: 16, stream: true }, { timeoutMs: 20000 });
  assert.ok(!fast.timedOut, 'the fast client hung');
  assert.equal(fast.status, 200, fast.body);
  const out = collect(parseSse(fast.body));
  assert.equal(out.errors.length, 0, fast.body.slice(-500));
  assert.equal(out.done, 1);
  assert.equal(Object.keys(out.text).length, N);
  for (let j = 0; j < N; j++) {
    const want = expected(p, { choice: j, maxTokens: 16 });
    assert.equal(out.text[j], want.text, `choice ${j}`);
    assert.equal(out.finish[j], want.finish_reason);
  }
  const cut = /reads too slowly/.test(cp.log());
  t.diagnostic(`slow reader cut off by carpool: ${cut}; slow client received ${slowBytes} bytes before pausing`);
  assert.ok(cut, `carpool did not cut off the slow reader (log:\n${cp.log().slice(-2000)})`);
  assert.ok((await cp.metrics()).carpool_slow_clients_dropped_total >= 1);
  const ok = await request(cp.port, 'GET', '/metrics');
  assert.equal(ok.status, 200);
  await cp.stop();
});

test('pass-through: an upstream that breaks mid-answer is not passed off as a complete answer', async (t) => {
  const http = require('node:http');
  const broken = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.method === 'GET') { res.writeHead(200, { 'Content-Type': 'application/json' }); res.end('{"data":[]}'); return; }
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      res.write('data: {"choices":[{"index":0,"delta":{"content":"half"}}]}\n\n');
      setTimeout(() => res.socket.destroy(), 50);
    });
  });
  await new Promise((r) => broken.listen(0, '127.0.0.1', r));
  const cp = await startCarpool(baseConfig({ url: `http://127.0.0.1:${broken.address().port}` }, { upstream: { dialect: 'openai' } }));
  t.after(async () => { await cp.stop(); broken.close(); });
  const outcome = await request(cp.port, 'POST', '/v1/chat/completions',
    { model: 'm', messages: [{ role: 'user', content: 'x' }], stream: true }, {}, { timeoutMs: 5000 })
    .then((r) => `complete ${r.status}`, (e) => `error ${e.message}`);
  assert.match(outcome, /^error/, `the client got a complete-looking answer: ${outcome}`);
  assert.match(cp.log(), /broke mid-answer/);
  const ok = await request(cp.port, 'GET', '/healthz');
  assert.equal(ok.status, 200);
});
