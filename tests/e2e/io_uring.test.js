// The write path's io_uring key: auto | on | off, what the log and /metrics say, and that answers are
// the same whichever path writes them (TLS clients always take send()).
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, curl, tmpdir, makeCerts } = require('./lib');
const { expected } = require('./simgen');

// 24 concurrent streams sharing calls: every client gets exactly its own tokens.
async function streamsAreRight(cp, tag) {
  const prompts = Array.from({ length: 24 }, (_, i) => `${tag} ${i}`);
  const rs = await Promise.all(prompts.map((prompt) =>
    request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt, max_tokens: 30, stream: true })));
  rs.forEach((r, i) => {
    assert.equal(r.status, 200);
    const got = collect(parseSse(r.body));
    const want = expected(prompts[i], { maxTokens: 30, answers: [20, 40] });
    assert.equal(got.text[0], want.text, `client ${i}`);
    assert.equal(got.finish[0], want.finish_reason);
    assert.equal(got.done, 1);
  });
}

// What auto chose on this machine: 1 when the kernel offers io_uring (and its sends fail at once on a
// full socket), else 0 with one warning.
let offered = null;
async function autoChoice() {
  if (offered !== null) return offered;
  const sim = await startSim(['--step-ms', '1']);
  const cp = await startCarpool({ ...baseConfig(sim), io_uring: 'auto' });
  offered = (await cp.metrics()).carpool_io_uring === 1;
  if (offered) assert.match(cp.log(), /client writes: io_uring/);
  else assert.match(cp.log(), /warn io_uring is unavailable \(.+\): client writes use send\(\)/);
  await cp.stop();
  await sim.kill();
  return offered;
}

test('io_uring: auto (the default) takes io_uring where the kernel offers it, else send(), and says which', async (t) => {
  const sim = await startSim(['--step-ms', '1', '--answer-tokens', '20:40']);
  const cfg = baseConfig(sim);
  const cp = await startCarpool({ ...cfg, io_uring: 'auto' });
  t.after(async () => { await cp.stop(); await sim.kill(); });
  const m0 = await cp.metrics();
  const on = await autoChoice();
  assert.equal(m0.carpool_io_uring, on ? 1 : 0);
  t.diagnostic(`io_uring offered here: ${on}`);
  await streamsAreRight(cp, 'auto');
  const m = await cp.metrics();
  if (on) {
    assert.ok(m.carpool_client_write_submits_total > 0);
    assert.ok(m.carpool_client_write_submits_total <= m.carpool_client_writes_total);
  } else {
    assert.equal(m.carpool_client_write_submits_total, 0);
  }
});

test('io_uring: on uses it (gauge 1, one submission for many writes), or refuses to start where it is unavailable', async (t) => {
  const sim = await startSim(['--step-ms', '1', '--answer-tokens', '20:40']);
  t.after(async () => { await sim.kill(); });
  if (!(await autoChoice())) {
    const r = await startCarpool({ ...baseConfig(sim), io_uring: 'on' }, { expectFail: true });
    assert.notEqual(r.code, 0);
    assert.match(r.log(), /io_uring: on, but io_uring is unavailable/);
    fs.rmSync(r.dir, { recursive: true, force: true });
    return;
  }
  const cp = await startCarpool({ ...baseConfig(sim), io_uring: 'on' });
  t.after(async () => { await cp.stop(); });
  assert.match(cp.log(), /info client writes: io_uring, one submission per loop turn/);
  assert.equal((await cp.metrics()).carpool_io_uring, 1);
  await streamsAreRight(cp, 'on');
  const m = await cp.metrics();
  assert.ok(m.carpool_client_write_submits_total > 0);
  // the 24 streams share calls: a submission carries the writes of every client written to in a turn
  assert.ok(m.carpool_client_writes_total > m.carpool_client_write_submits_total,
    `${m.carpool_client_writes_total} writes in ${m.carpool_client_write_submits_total} submissions`);
});

test('io_uring: off writes with send() (gauge 0, no submissions) and says so', async (t) => {
  const sim = await startSim(['--step-ms', '1', '--answer-tokens', '20:40']);
  const cp = await startCarpool({ ...baseConfig(sim), io_uring: 'off' });
  t.after(async () => { await cp.stop(); await sim.kill(); });
  assert.match(cp.log(), /info client writes: send\(\), one per client per loop turn \(io_uring: off\)/);
  assert.equal((await cp.metrics()).carpool_io_uring, 0);
  await streamsAreRight(cp, 'off');
  const m = await cp.metrics();
  assert.equal(m.carpool_client_write_submits_total, 0);
  assert.ok(m.carpool_client_writes_total > 0);
});

test('io_uring: on with a TLS listener: TLS clients take send() and get the same answers', async (t) => {
  if (!(await autoChoice())) return t.skip('io_uring is unavailable here');
  const dir = tmpdir();
  const certs = makeCerts(dir);
  const sim = await startSim(['--step-ms', '1', '--answer-tokens', '20:40']);
  const cfg = baseConfig(sim);
  cfg.listen = [{ address: '127.0.0.1:0' }, { address: '127.0.0.1:0', tls: { cert: certs.cert, key: certs.key } }];
  const cp = await startCarpool({ ...cfg, io_uring: 'on' });
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const tlsPort = Number(cp.log().match(/listening on 127\.0\.0\.1:(\d+) \(tls\)/)[1]);
  const prompts = ['tls a', 'tls b', 'tls c'];
  const outs = await Promise.all(prompts.map((prompt) => curl(['-sN', '--cacert', certs.ca,
    `https://localhost:${tlsPort}/v1/completions`, '-H', 'Content-Type: application/json',
    '-d', JSON.stringify({ model: 'm', prompt, max_tokens: 12, stream: true })])));
  outs.forEach((o, i) => {
    assert.equal(o.code, 0, o.err);
    const got = collect(parseSse(o.out));
    assert.equal(got.text[0], expected(prompts[i], { maxTokens: 12, answers: [20, 40] }).text);
    assert.equal(got.done, 1);
  });
  await streamsAreRight(cp, 'beside tls'); // and the plain listener's clients alongside
});

// io_uring made unavailable: strace fails every io_uring_setup with ENOSYS, as a kernel without it would.
const noUring = ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'inject=io_uring_setup:error=ENOSYS'];
// LeakSanitizer cannot run under ptrace (make SAN=1): leaks are checked everywhere else
const noLeakCheck = { ASAN_OPTIONS: `${process.env.ASAN_OPTIONS ? `${process.env.ASAN_OPTIONS}:` : ''}detect_leaks=0` };
function straceWorks() {
  const r = require('node:child_process').spawnSync(noUring[0], [...noUring.slice(1), 'true']);
  return !r.error && r.status === 0;
}

test('io_uring unavailable: auto falls back to send() with one warning (gauge 0); on refuses to start', async (t) => {
  if (!straceWorks()) return t.skip('strace (with ptrace allowed) is needed to take io_uring away');
  const sim = await startSim(['--step-ms', '1', '--answer-tokens', '20:40']);
  t.after(async () => { await sim.kill(); });
  const refused = await startCarpool({ ...baseConfig(sim), io_uring: 'on' }, { expectFail: true, wrap: noUring, env: noLeakCheck });
  assert.notEqual(refused.code, 0);
  assert.match(refused.log(), /error io_uring: on, but io_uring is unavailable \(io_uring_queue_init: Function not implemented\)/);
  fs.rmSync(refused.dir, { recursive: true, force: true });

  const cp = await startCarpool({ ...baseConfig(sim, { workers: 2 }), io_uring: 'auto' }, { wrap: noUring, env: noLeakCheck });
  // SIGTERM to strace would detach it and leave carpool running: carpool itself is stopped
  const child = Number(fs.readFileSync(`/proc/${cp.proc.pid}/task/${cp.proc.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  t.after(async () => {
    const exited = new Promise((resolve) => cp.proc.once('exit', (code) => resolve(code)));
    process.kill(child, 'SIGTERM');
    assert.equal(await exited, 0, cp.log());
    fs.rmSync(cp.dir, { recursive: true, force: true });
  });
  const warnings = cp.log().match(/warn io_uring is unavailable \(io_uring_queue_init: Function not implemented\): client writes use send\(\)/g);
  assert.equal(warnings.length, 1, 'two workers, one warning');
  assert.doesNotMatch(cp.log(), /client writes: io_uring/);
  assert.equal((await cp.metrics()).carpool_io_uring, 0);
  await streamsAreRight(cp, 'fallback');
  const m = await cp.metrics();
  assert.equal(m.carpool_client_write_submits_total, 0);
  assert.ok(m.carpool_client_writes_total > 0);
});
