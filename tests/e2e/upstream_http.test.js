// carpool's own HTTP/1.1 client (src/upstream.c): response framing as upstreams really send it, and
// as they should not. A raw TCP upstream writes each answer byte for byte as the test scripts it.
'use strict';
const assert = require('node:assert/strict');
const net = require('node:net');
const { test, startCarpool, baseConfig, request, parseSse, collect } = require('./lib');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A raw upstream: answers GET probes with small JSON, and each POST with respond(socket, body),
// which writes whatever bytes the test wants. Counts the TCP connections it accepted.
async function rawUpstream(respond) {
  const state = { connections: 0, posts: 0 };
  const srv = net.createServer((sock) => {
    state.connections++;
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    sock.on('data', async (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        const m = head.match(/content-length:\s*(\d+)/i);
        const len = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + len) return;
        const body = buf.subarray(end + 4, end + 4 + len).toString();
        buf = buf.subarray(end + 4 + len);
        if (head.startsWith('GET /v1/models')) {
          const j = '{"object":"list","data":[{"id":"m","object":"model","owned_by":"openai"}]}';
          sock.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${j.length}\r\n\r\n${j}`);
        } else if (head.startsWith('GET ')) {
          sock.write('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
        } else {
          state.posts++;
          await respond(sock, JSON.parse(body));
        }
      }
    });
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { state, url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => { srv.close(r); for (const s of srv._conns || []) s.destroy(); }) };
}

function sseEvents(texts) {
  return texts.map((t, i) => `data: ${JSON.stringify({ id: 'c', object: 'text_completion', created: 1, model: 'm',
    choices: [{ index: 0, text: t, logprobs: null, finish_reason: i === texts.length - 1 ? 'stop' : null }] })}\n\n`).join('') + 'data: [DONE]\n\n';
}

// Writes s to sock in pieces of n bytes, a pause between them.
async function drip(sock, s, n = 1, ms = 0) {
  for (let i = 0; i < s.length; i += n) {
    sock.write(s.slice(i, i + n));
    if (ms) await sleep(ms);
  }
}

const TEXTS = ['Hello', ' from', ' a', ' raw', ' upstream', '.'];

async function carpoolFor(up, extra = {}) {
  return startCarpool(baseConfig(up, { upstream: { dialect: 'openai' }, batching: { policy: 'adaptive' }, ...extra }));
}

async function streamOnce(cp, prompt = 'p') {
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'm', prompt, max_tokens: 8, stream: true }, {}, { timeoutMs: 15000 });
  return { r, got: r.status === 200 ? collect(parseSse(r.body)) : null };
}

test('chunked answer dripped a byte at a time, with chunk extensions and trailers', async (t) => {
  const up = await rawUpstream(async (sock) => {
    const body = sseEvents(TEXTS);
    let out = 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n';
    for (let i = 0; i < body.length; i += 37) {
      const piece = body.slice(i, i + 37);
      out += `${Buffer.byteLength(piece).toString(16)};ext=1\r\n${piece}\r\n`;
    }
    out += '0\r\nX-Trailer: yes\r\n\r\n';
    await drip(sock, out, 1);
  });
  const cp = await carpoolFor(up);
  t.after(async () => { await cp.stop(); await up.close(); });
  const { r, got } = await streamOnce(cp);
  assert.equal(r.status, 200, r.body);
  assert.equal(got.text[0], TEXTS.join(''));
  assert.equal(got.finish[0], 'stop');
  assert.equal(got.done, 1);
});

test('Content-Length answers in pieces, and keep-alive: one upstream connection serves the calls in turn', async (t) => {
  const up = await rawUpstream(async (sock, body) => {
    const j = JSON.stringify({ id: 'c', object: 'text_completion', created: 1, model: 'm',
      choices: [{ index: 0, text: `answer to ${body.prompt}`, logprobs: null, finish_reason: 'stop' }],
      usage: { prompt_tokens: 1, completion_tokens: 3, total_tokens: 4 } });
    // a streamed request gets SSE, but sized with Content-Length rather than chunked
    const s = body.stream === false ? j : sseEvents([`answer to ${body.prompt[0]}`]);
    await drip(sock, `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${Buffer.byteLength(s)}\r\n\r\n${s}`, 50, 1);
  });
  const cp = await carpoolFor(up);
  t.after(async () => { await cp.stop(); await up.close(); });
  await sleep(300); // the start-up probes (GET /v1/models, /info) are done
  const before = up.state.connections;
  for (let i = 0; i < 4; i++) {
    const { r, got } = await streamOnce(cp, `q${i}`);
    assert.equal(r.status, 200, r.body);
    assert.equal(got.text[0], `answer to q${i}`);
  }
  assert.equal(up.state.posts, 4);
  assert.ok(up.state.connections - before <= 1, `${up.state.connections - before} new upstream connections for 4 calls in turn`);
});

test('a body that ends when the upstream closes (no length, no chunks), after a 100 Continue', async (t) => {
  const up = await rawUpstream(async (sock) => {
    sock.write('HTTP/1.1 100 Continue\r\n\r\n');
    await sleep(5);
    await drip(sock, `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n${sseEvents(TEXTS)}`, 64, 1);
    sock.end();
  });
  const cp = await carpoolFor(up);
  t.after(async () => { await cp.stop(); await up.close(); });
  for (let i = 0; i < 2; i++) { // the second call needs a new connection: the first one was closed
    const { r, got } = await streamOnce(cp, `close ${i}`);
    assert.equal(r.status, 200, r.body);
    assert.equal(got.text[0], TEXTS.join(''));
  }
});

for (const [name, bytes] of [
  ['a chunk size that is not hex', 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n'],
  ['a chunk not followed by CRLF', 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX'],
  ['a status line that is not HTTP', 'SPDY/9 200 OK\r\n\r\n'],
  ['a response head over 64 KiB', `HTTP/1.1 200 OK\r\n${'X-Pad: ' + 'a'.repeat(1000) + '\r\n'.repeat(1)}`.repeat(70) + '\r\n'],
  ['a negative Content-Length', 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n'],
  // framing two parsers could read two ways (RFC 9112 6.3): refused even when the body looks whole
  ...(() => {
    const s = sseEvents(['looks', ' whole']);
    const n = Buffer.byteLength(s);
    return [
      ['two Content-Length values', `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${n}\r\nContent-Length: ${n}\r\n\r\n${s}`],
      ['Content-Length with Transfer-Encoding', `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${n}\r\nTransfer-Encoding: identity\r\n\r\n${s}`],
      ['a blank before the colon of Content-Length', `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length : ${n}\r\n\r\n${s}`],
    ];
  })(),
]) {
  test(`malformed upstream answer: ${name} -> the client gets a 5xx error, carpool keeps serving`, async (t) => {
    let bad = true;
    const up = await rawUpstream(async (sock) => {
      if (bad) {
        sock.write(bytes);
        await sleep(20);
        sock.destroy();
        return;
      }
      const s = sseEvents(['fine']);
      sock.write(`HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${Buffer.byteLength(s)}\r\n\r\n${s}`);
    });
    const cp = await carpoolFor(up);
    t.after(async () => { await cp.stop(); await up.close(); });
    const { r, got } = await streamOnce(cp, 'bad');
    if (r.status === 200) {
      assert.equal(got.errors.length, 1, `a stream that started must end with an error event: ${r.body}`);
    } else {
      assert.ok(r.status >= 500 && r.status < 600, `status ${r.status}: ${r.body}`);
      assert.ok(JSON.parse(r.body).error.message);
    }
    bad = false;
    await sleep(50);
    const ok = await streamOnce(cp, 'good');
    assert.equal(ok.r.status, 200, ok.r.body);
    assert.equal(ok.got.text[0], 'fine');
  });
}
