// Descriptor exhaustion and proxy loops (issue 9, defect 4): carpool under a low `ulimit -n` answers
// the connections it cannot serve with 503, without spinning or flooding its log, and serves again
// once descriptors free up; an upstream URL that leads back to carpool is refused, not followed.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const net = require('node:net');
const { test, startSim, startCarpool, baseConfig, request } = require('./lib');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// CPU seconds (user + system) the process has used so far.
function cpuSeconds(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

// Opens a connection and collects what the server sends; resolves at once with a handle.
function hold(port) {
  const s = net.connect(port, '127.0.0.1');
  const h = { sock: s, data: '' };
  s.on('data', (d) => { h.data += d; });
  s.on('error', () => {});
  return h;
}

test('out of descriptors: 503 and close, no spin, at most one log line a second, then service again', async () => {
  const sim = await startSim(['--step-ms', '1']);
  const cp = await startCarpool(baseConfig(sim), { wrap: ['prlimit', '--nofile=128:128'] });
  try {
    assert.match(cp.log(), /descriptor limit \(128\) is below what limits\.max_clients \(10000\) can need/);
    const cpu0 = cpuSeconds(cp.proc.pid);
    const t0 = Date.now();
    const socks = [];
    for (let i = 0; i < 400; i++) {
      socks.push(hold(cp.port));
      if (i % 50 === 49) await sleep(50);
    }
    await sleep(3000);
    const secs = (Date.now() - t0) / 1000;
    const cpu = cpuSeconds(cp.proc.pid) - cpu0;
    const refused = socks.filter((h) => /^HTTP\/1\.1 503 /.test(h.data));
    assert.ok(refused.length >= 100, `${refused.length} connections got a 503`);
    assert.match(refused[0].data, /out of file descriptors/);
    assert.ok(cpu < 1.5, `carpool used ${cpu} s of CPU in ${secs} s`);
    const lines = cp.log().split('\n').filter((l) => l.includes('out of file descriptors'));
    assert.ok(lines.length >= 1 && lines.length <= secs + 2, `${lines.length} log lines in ${secs} s`);
    assert.ok(!cp.log().includes('Too many open files\n'), 'libevent flooded the log');
    for (const h of socks) h.sock.destroy();
    await sleep(500);
    const r = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: 'after', max_tokens: 3 },
      {}, { timeoutMs: 10000 });
    assert.equal(r.status, 200, r.body);
  } finally {
    await cp.stop();
    await sim.kill();
  }
});

// A port that was free a moment ago, for a carpool whose upstream is itself.
async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

test('an upstream URL that leads back to carpool: 508 at once, no recursion', async () => {
  const port = await freePort();
  const cp = await startCarpool({
    workers: 1,
    listen: [{ address: `127.0.0.1:${port}` }],
    upstreams: [{ url: `http://127.0.0.1:${port}`, dialect: 'openai' }],
    log: { level: 'info' },
  });
  try {
    const cpu0 = cpuSeconds(cp.proc.pid);
    const r = await request(cp.port, 'GET', '/v1/models', undefined, {}, { timeoutMs: 5000 });
    assert.equal(r.status, 508, r.body);
    const c = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt: 'loop', max_tokens: 2 },
      {}, { timeoutMs: 5000 });
    assert.ok(c.status >= 500, `${c.status} ${c.body}`);
    assert.ok(cpuSeconds(cp.proc.pid) - cpu0 < 1, 'carpool spun');
    assert.match(cp.log(), /proxy loop/);
    const m = await cp.metrics();
    assert.ok(m['carpool_upstream_http_calls_total{upstream="http://127.0.0.1:' + port + '"}'] < 20);
  } finally {
    await cp.stop();
  }
});
