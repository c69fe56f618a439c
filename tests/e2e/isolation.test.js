// No client ever sees another client's data, even when the upstream answers a merged call in a way
// carpool cannot split: a 200 that is not an event stream (a server that ignores `stream`), or an
// error page that echoes the request. Each member gets carpool's own error JSON, naming the upstream.
'use strict';
const assert = require('node:assert/strict');
const { test, startCarpool, baseConfig, request, postUpstream } = require('./lib');

// A fake upstream whose answer to every POST is made by `answer(parsedBody)` -> {status, type, body};
// `seen` holds the parsed bodies.
async function echoUpstream(answer) {
  const up = await postUpstream((raw) => {
    const out = answer(JSON.parse(raw));
    return { status: out.status, headers: { 'Content-Type': out.type }, body: out.body };
  });
  return { ...up, get seen() { return up.seen.map((b) => JSON.parse(b)); } };
}

// Four clients at once, two streaming and two not; every body must be carpool's own error JSON with
// no prompt text in it, none of the upstream's bytes, and the upstream named.
async function mergedClients(t, up, tag, statusCheck) {
  const cp = await startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, batching: { policy: 'fixed', max_wait_ms: 200 } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const prompts = [0, 1, 2, 3].map((i) => `secret-${tag}-client-${i}-text`);
  const rs = await Promise.all(prompts.map((p, i) => request(cp.port, 'POST', '/v1/completions',
    { model: 'sim-model', prompt: p, max_tokens: 4, stream: i % 2 === 1 }, {}, { timeoutMs: 20000 })));
  assert.ok(up.seen.some((c) => Array.isArray(c.prompt) && c.prompt.length === 4),
    `the four clients were not merged into one call: ${JSON.stringify(up.seen.map((c) => c.prompt))}`);
  rs.forEach((r, i) => {
    statusCheck(r.status, r.body);
    assert.match(String(r.headers['content-type']), /^application\/json/, r.body);
    const j = JSON.parse(r.body); // exactly one JSON value: JSON.parse refuses trailing bytes
    assert.deepEqual(Object.keys(j), ['error', 'request_id'], r.body);
    assert.equal(j.request_id, r.headers['x-request-id'], r.body);
    for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in j.error, `error.${k} missing: ${r.body}`);
    assert.ok(j.error.message.includes(up.url), `the message does not name the upstream: ${r.body}`);
    for (const p of prompts) assert.ok(!r.body.includes(p), `client ${i} received prompt text "${p}": ${r.body}`);
    assert.ok(!r.body.includes('UPSTREAM-BODY'), `client ${i} received the upstream's body: ${r.body}`);
  });
  await cp.stop();
  return rs;
}

const completion = (j) => JSON.stringify({
  id: 'cmpl-UPSTREAM-BODY', object: 'text_completion', model: j.model,
  choices: j.prompt.map((p, i) => ({ index: i, text: ` answer to ${p}`, finish_reason: 'length' })),
});

test('isolation: a 200 that is not an event stream gives every member a clean 502, never the others\' completions', async (t) => {
  const up = await echoUpstream((j) => ({ status: 200, type: 'application/json', body: completion(j) }));
  t.after(() => up.close());
  await mergedClients(t, up, 'json200', (s, body) => assert.equal(s, 502, body));
  assert.equal(up.seen.length, 1, 'an unusable answer from the only upstream is not worth a retry');
});

test('isolation: an error page that echoes the merged request is not quoted to its members', async (t) => {
  const up = await echoUpstream((j) => ({ status: 500, type: 'text/html', body: `<h1>UPSTREAM-BODY</h1>${JSON.stringify(j.prompt)}` }));
  t.after(() => up.close());
  await mergedClients(t, up, 'html500', (s, body) => assert.equal(s, 502, body));
});

test('isolation: an error JSON followed by more bytes is not forwarded as it came', async (t) => {
  const up = await echoUpstream((j) => ({
    status: 500, type: 'application/json',
    body: `{"error":{"message":"x","type":"server_error"}}${completion(j)}`,
  }));
  t.after(() => up.close());
  await mergedClients(t, up, 'trail500', (s, body) => assert.equal(s, 502, body));
});

test('isolation: an embeddings 200 whose body breaks is no answer: tried again, then a 502, never a 200 with an error body', async (t) => {
  const http = require('node:http');
  let posts = 0;
  const srv = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      posts++;
      // a 200 that promises more than it sends, then the connection drops
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': 1000 });
      res.write('{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,');
      setTimeout(() => res.socket.destroy(), 20);
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => { srv.closeAllConnections(); srv.close(); });
  const cp = await startCarpool(baseConfig({ url: `http://127.0.0.1:${srv.address().port}` }, { upstream: { dialect: 'openai' } }));
  t.after(() => cp.proc.kill('SIGKILL'));
  const r = await request(cp.port, 'POST', '/v1/embeddings', { model: 'sim-model', input: ['a', 'b'] }, {}, { timeoutMs: 20000 });
  assert.equal(r.status, 502, r.body);
  const j = JSON.parse(r.body);
  assert.equal(j.error.type, 'server_error', r.body);
  assert.ok(posts >= 2, `a broken 200 before any byte reached the client was not tried again (${posts} call)`);
  await cp.stop();
});
