// Several workers: one shared batch queue (the default) against a queue per worker.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { test, startSim, startCarpool, baseConfig, request, parseSse, collect, tmpdir, assertEmbeddings, connectOnWorkers, rawPost,
  sendUntilClose, splitResponses } = require('./lib');
const { expected } = require('./simgen');

function config(sim, queue, file, extra = {}) {
  const cfg = baseConfig(sim, { workers: 2, batching: { policy: 'fixed', max_wait_ms: 150, queue, ...(extra.batching || {}) } });
  cfg.log.access = file;
  return cfg;
}

// N clients at once, each on its own connection so that both workers get some.
function burst(port, n, tag, opts = {}) {
  return Promise.all(Array.from({ length: n }, (_, i) => {
    const agent = new http.Agent({ keepAlive: false });
    const stream = i % 3 !== 2;
    return request(port, 'POST', '/v1/completions',
      { model: 'sim-model', prompt: `${tag} ${i}`, max_tokens: 10, stream }, {}, { agent })
      .then((r) => ({ i, stream, ...r }));
  }));
}

function checkAnswers(res, tag) {
  for (const r of res) {
    assert.equal(r.status, 200, r.body);
    const want = expected(`${tag} ${r.i}`, { maxTokens: 10 });
    const text = r.stream ? collect(parseSse(r.body)).text[0] : JSON.parse(r.body).choices[0].text;
    assert.equal(text, want.text, `client ${r.i}`);
  }
}

// A simulator and carpool with two workers; both stop (cleanly) when the test ends.
async function start(t, queue, simArgs, extra) {
  const sim = await startSim(simArgs);
  const dir = tmpdir();
  const file = path.join(dir, 'access.log');
  const cp = await startCarpool(config(sim, queue, file, extra));
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  return { sim, cp, file };
}

// Which worker accepts a connection is the kernel's choice; a burst that all landed on one worker
// proves nothing, so bursts of 48 clients are tried (at most 6) until both workers took clients.
// check(byWorker, lines, stats) asserts each round: the access log lines of the burst, split by worker
// and whole, and the sim's /stats.
async function burstsUntilBothWorkers(t, { sim, cp, file }, name, check) {
  for (let round = 0; ; round++) {
    const tag = `${name} r${round}`;
    await sim.reset();
    fs.writeFileSync(file, '');
    const res = await burst(cp.port, 48, tag);
    checkAnswers(res, tag);
    const lines = accessLines(file);
    assert.equal(lines.length, 48);
    const byWorker = [0, 1].map((w) => lines.filter((l) => l.worker === w));
    const st = await sim.stats();
    t.diagnostic(`round ${round}: clients per worker ${byWorker.map((b) => b.length)}, upstream calls ${st.completion_calls}`);
    check(byWorker, lines, st);
    if (byWorker.every((b) => b.length)) return;
    assert.ok(round < 5, 'in 6 bursts, never did both workers take clients');
  }
}

function accessAll(file) {
  const text = fs.readFileSync(file, 'utf8').trim();
  return text ? text.split('\n').map((l) => JSON.parse(l)) : [];
}

function accessLines(file) {
  return accessAll(file).filter((l) => l.route === '/v1/completions');
}

// Asserts that each pinned connection's requests on `route` were logged by the worker holding it.
function assertServedBy(file, conns, route, status) {
  const lines = accessAll(file).filter((l) => l.route === route);
  conns.forEach(({ client, worker }, k) => {
    const mine = lines.filter((l) => l.client === client);
    assert.equal(mine.length, 1, `connection ${k}: one ${route} request logged`);
    assert.equal(mine[0].worker, worker, `connection ${k} was served by worker ${worker}, which took it`);
    assert.equal(mine[0].status, typeof status === 'function' ? status(k) : status, `connection ${k}: status`);
  });
}

test('shared queue: clients of both workers ride one upstream call and each gets its own answer', async (t) => {
  const { sim, cp, file } = await start(t, 'shared', ['--step-ms', '5']);
  assert.match(cp.log(), /2 workers, one shared queue/);
  await burstsUntilBothWorkers(t, { sim, cp, file }, 'shared', (byWorker, lines, st) => {
    assert.equal(st.completion_calls, 1, 'one batch for all the clients');
    assert.equal(new Set(lines.map((l) => l.batch)).size, 1);
    for (const l of lines) assert.equal(l.batch_size, 48);
  });
});

test('per_worker queue: each worker batches its own clients', async (t) => {
  const { sim, cp, file } = await start(t, 'per_worker', ['--step-ms', '5']);
  assert.match(cp.log(), /2 workers, per-worker queue/);
  await burstsUntilBothWorkers(t, { sim, cp, file }, 'own', (byWorker, lines, st) => {
    // each upstream call carries exactly the clients of one worker (batch ids count per worker)
    const calls = st.requests.filter((e) => e.path === '/v1/completions');
    assert.equal(calls.length, byWorker.filter((b) => b.length).length, 'one call per worker that had clients');
    for (const b of byWorker) {
      if (b.length) assert.equal(new Set(b.map((l) => l.batch)).size, 1, `worker ${b[0].worker}: one batch`);
    }
    assert.deepEqual(calls.map((c) => c.prompts.length).sort((x, y) => x - y),
      byWorker.map((b) => b.length).filter((n) => n).sort((x, y) => x - y), 'each call carries one worker\'s clients');
  });
});

test('shared queue: clients that leave mid-stream on either worker do not disturb the others', async (t) => {
  const { cp, file } = await start(t, 'shared', ['--step-ms', '20']);
  const conns = await connectOnWorkers(cp.port, () => accessAll(file), { perWorker: 12 });
  const leave = (k) => k % 2 === 0; // half the clients of each worker leave at their first event
  const res = await Promise.all(conns.map(({ sock }, k) => {
    const req = rawPost('/v1/completions', { model: 'sim-model', prompt: `leave ${k}`, max_tokens: 16, stream: true }, 'Connection: close\r\n');
    if (!leave(k)) return sendUntilClose(sock, req);
    return new Promise((resolve) => {
      let text = '';
      sock.on('data', (d) => { text += d; if (text.includes('data: {')) { sock.destroy(); resolve(null); } });
      sock.on('close', () => resolve(null));
      sock.write(req);
    });
  }));
  res.forEach((o, k) => {
    if (leave(k)) return;
    const { responses: r } = splitResponses(o);
    assert.equal(r.length, 1, `client ${k} (worker ${conns[k].worker}) got its answer`);
    assert.equal(collect(parseSse(r[0].body)).text[0], expected(`leave ${k}`, { maxTokens: 16 }).text, `client ${k} (worker ${conns[k].worker})`);
  });
  // carpool is still well: a request after the departures is answered in full
  const after = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: 'after', max_tokens: 5 });
  assert.equal(JSON.parse(after.body).choices[0].text, expected('after', { maxTokens: 5 }).text);
  await new Promise((r) => setTimeout(r, 300));
  assertServedBy(file, conns, '/v1/completions', (k) => (leave(k) ? 499 : 200));
  const m = await cp.metrics();
  assert.equal(m.carpool_open_streams || 0, 0, 'no stream left open');
});

test('shared queue: embeddings from both workers are batched and reassembled', async (t) => {
  const { sim, cp, file } = await start(t, 'shared', ['--step-ms', '5']);
  const conns = await connectOnWorkers(cp.port, () => accessAll(file), { perWorker: 10 });
  const inputs = conns.map((_, i) => [`emb ${i} a`, `emb ${i} b`]);
  const res = await Promise.all(conns.map(({ sock }, i) => sendUntilClose(sock,
    rawPost('/v1/embeddings', { model: 'sim-model', input: inputs[i] }, 'Connection: close\r\n'))));
  res.forEach((o, i) => {
    const { responses: r } = splitResponses(o);
    assert.equal(r.length, 1, `client ${i}: one answer`);
    assert.equal(r[0].status, 200, r[0].body);
    assertEmbeddings(JSON.parse(r[0].body).data, inputs[i], `client ${i} (worker ${conns[i].worker})`);
  });
  const st = await sim.stats();
  assert.equal(st.embedding_calls, 1, `${st.embedding_calls} upstream calls for 20 clients on two workers`);
  assertServedBy(file, conns, '/v1/embeddings', 200);
});

test('shared queue: SIGTERM lets the streams of both workers finish, then carpool exits cleanly', async (t) => {
  const { cp, file } = await start(t, 'shared', ['--step-ms', '30'], { batching: { max_wait_ms: 20 } });
  const conns = await connectOnWorkers(cp.port, () => accessAll(file), { perWorker: 8 });
  const stream = (i) => i % 3 !== 2;
  const pending = Promise.all(conns.map(({ sock }, i) => sendUntilClose(sock, rawPost('/v1/completions',
    { model: 'sim-model', prompt: `drain ${i}`, max_tokens: 10, stream: stream(i) }, 'Connection: close\r\n'))));
  await new Promise((r) => setTimeout(r, 120));
  const stopped = cp.stop(); // SIGTERM; asserts exit 0 and a clean log
  (await pending).forEach((o, i) => {
    const { responses: r } = splitResponses(o);
    const where = `client ${i} (worker ${conns[i].worker}) finished during the drain`;
    assert.equal(r.length, 1, where);
    const text = stream(i) ? collect(parseSse(r[0].body)).text[0] : JSON.parse(r[0].body).choices[0].text;
    assert.equal(text, expected(`drain ${i}`, { maxTokens: 10 }).text, where);
  });
  await stopped;
  assertServedBy(file, conns, '/v1/completions', 200);
});
