// One record of each upstream's health for all workers (issue 10 item 5): an ejection, whether by
// worker 0's health checks or by failed calls on any worker, and readiness read the same whichever
// worker takes the request - /readyz, carpool_upstream_healthy and carpool_upstream_ready agree.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { test, startCarpool, baseConfig, tmpdir, connectOnWorkers, rawPost, splitResponses } = require('./lib');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A fake upstream: GET /health answers healthStatus, so does GET /v1/models (with a list), and a POST is
// cut (the connection destroyed before any answer byte) while breakPosts is set.
async function fakeUpstream() {
  const st = { healthStatus: 200, breakPosts: false, healthChecks: 0 };
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/health') {
        st.healthChecks++;
        res.writeHead(st.healthStatus, { 'Content-Type': 'text/plain' });
        res.end('ok');
      } else if (req.method === 'POST' && st.breakPosts) {
        if (st.posts) st.posts.push(Date.now());
        req.socket.destroy();
      } else if (req.method === 'POST') {
        const chunk = '{"id":"x","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}';
        res.writeHead(200, { 'Content-Type': 'text/event-stream' });
        res.end(`data: ${chunk}\n\ndata: [DONE]\n\n`);
      } else {
        res.writeHead(st.healthStatus, { 'Content-Type': 'application/json' });
        res.end('{"object":"list","data":[{"id":"m","object":"model","owned_by":"someone"}]}');
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return { st, url, close: () => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }) };
}

// One request on a held connection (keep-alive); resolves {status, body}.
function ask(sock, text) {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d) => {
      buf += d.toString('latin1');
      const { responses } = splitResponses(buf);
      if (responses.length) { sock.off('data', onData); sock.off('error', reject); resolve(responses[0]); }
    };
    sock.on('data', onData);
    sock.on('error', reject);
    sock.write(text);
  });
}

const get = (sock, p) => ask(sock, `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`);

// What one worker says of the upstream: /readyz's status and the two gauges.
async function verdict(sock, url) {
  const ready = (await get(sock, '/readyz')).status;
  const m = (await get(sock, '/metrics')).body;
  const gauge = (name) => {
    const line = m.split('\n').find((l) => l.startsWith(`${name}{upstream="${url}"} `));
    assert.ok(line, `no ${name} in /metrics`);
    return Number(line.split(' ')[1]);
  };
  return { readyz: ready, healthy: gauge('carpool_upstream_healthy'), ready: gauge('carpool_upstream_ready') };
}

async function start(t, queue, upstreamExtra) {
  const up = await fakeUpstream();
  const dir = tmpdir();
  const file = path.join(dir, 'access.log');
  const cfg = baseConfig({ url: up.url }, { workers: 2, batching: { policy: 'fixed', max_wait_ms: 1, queue },
    upstream: { dialect: 'openai', ...upstreamExtra } });
  cfg.log.access = file;
  const cp = await startCarpool(cfg);
  const access = () => {
    const text = fs.readFileSync(file, 'utf8').trim();
    return text ? text.split('\n').map((l) => JSON.parse(l)) : [];
  };
  const conns = await connectOnWorkers(cp.port, access, { perWorker: 1 });
  t.after(async () => { for (const c of conns) c.sock.destroy(); await cp.stop(); await up.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return { up, cp, conns: [0, 1].map((w) => conns.find((c) => c.worker === w)) };
}

// Polls until both workers say the same and want(verdict) holds; resolves with both verdicts. Worker
// 0 is asked before and after worker 1: the state may change in between (a backoff ends, a check
// fails), but worker 1 must say what worker 0 said at one of the two moments.
async function bothSay(conns, url, want, what, timeoutMs = 10000) {
  const t0 = Date.now();
  for (;;) {
    const before = await verdict(conns[0].sock, url);
    const v1 = await verdict(conns[1].sock, url);
    const after = await verdict(conns[0].sock, url);
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    assert.ok(same(v1, before) || same(v1, after),
      `worker 0 says ${JSON.stringify(before)} then ${JSON.stringify(after)}, worker 1 meanwhile ${JSON.stringify(v1)} (${what})`);
    const v = [before, v1];
    if (same(before, v1) && want(v1)) return v;
    assert.ok(Date.now() - t0 < timeoutMs, `not within ${timeoutMs} ms: ${what}; both say ${JSON.stringify(v[0])}`);
    await sleep(100);
  }
}

test('workers: 2: a failed health check (worker 0) ejects the upstream for both workers; /readyz turns on both after the grace period', async (t) => {
  const { up, cp, conns } = await start(t, 'shared', { health_path: '/health', health_interval_ms: 200 });
  await bothSay(conns, up.url, (v) => v.readyz === 200 && v.healthy === 1 && v.ready === 1, 'ready and healthy at start');

  up.st.healthStatus = 503;
  const t0 = Date.now();
  await bothSay(conns, up.url, (v) => v.healthy === 0, 'ejected after a failed health check');
  await bothSay(conns, up.url, (v) => v.readyz === 503 && v.ready === 0, 'not ready past the grace period', 15000);
  assert.ok(Date.now() - t0 >= 4500, `not ready after ${Date.now() - t0} ms: the grace period is 5 s`);
  assert.match(cp.log(), /ejected for \d+ ms after a failed health check/);

  up.st.healthStatus = 200;
  await bothSay(conns, up.url, (v) => v.readyz === 200 && v.healthy === 1 && v.ready === 1, 'back after a passing check');
});

test('queue: per_worker: calls that break on one worker eject the upstream for both', async (t) => {
  const { up, cp, conns } = await start(t, 'per_worker', {});
  const ok = await ask(conns[1].sock, rawPost('/v1/completions', { model: 'm', prompt: 'first', max_tokens: 2 }));
  assert.equal(ok.status, 200, ok.body);
  await bothSay(conns, up.url, (v) => v.readyz === 200 && v.healthy === 1, 'ready and healthy after an answer');

  // worker 1 alone sends (and retries) this request: three broken calls in a row eject the upstream
  up.st.breakPosts = true;
  const r = await ask(conns[1].sock, rawPost('/v1/completions', { model: 'm', prompt: 'cut', max_tokens: 2 }));
  assert.ok(r.status >= 500, `${r.status} ${r.body}`);
  assert.match(cp.log(), /ejected for \d+ ms after repeated failures/);
  const [v] = await bothSay(conns, up.url, (x) => x.healthy === 0, 'ejected by worker 1 alone', 1000);
  assert.equal(v.ready, 1, 'still ready within its grace period');

  // and worker 0, which sent nothing, holds its request until the backoff (1 s) ends
  const sent = Date.now();
  up.st.posts = [];
  const held = await ask(conns[0].sock, rawPost('/v1/completions', { model: 'm', prompt: 'held', max_tokens: 2 }));
  assert.ok(held.status >= 500, `${held.status} ${held.body}`);
  assert.ok(up.st.posts.length > 0, 'worker 0 sent it after the backoff');
  assert.ok(up.st.posts[0] - sent >= 500, `worker 0 sent to the ejected upstream after ${up.st.posts[0] - sent} ms`);
});
