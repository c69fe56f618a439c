// The ready-made configs in configs/: every file passes --check-config, and each ready config is
// exercised as written. Only what cannot work on this machine is rewritten (upstream hosts → a
// carpool-sim of the matching dialect, listen addresses → loopback port 0 / a temp unix socket,
// file paths → temp files, https → http for the sim); every other setting is kept.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { test, ROOT, BIN, startSim, startCarpool, request, readyz, parseSse, collect, curl, tmpdir } = require('./lib');
const { expected, embedding } = require('./simgen');

const CONFIGS = path.join(ROOT, 'configs');
const readConfig = (name) => fs.readFileSync(path.join(CONFIGS, name), 'utf8');

// Replaces every match of `re` (a global regex) in `text`, asserting it matched exactly `count` times,
// so a config edit that breaks a rewrite fails loudly instead of silently testing something else.
function sub(text, re, replacement, count = 1) {
  assert.ok(re.global, `${re} must be global`);
  const n = (text.match(re) || []).length;
  assert.equal(n, count, `expected ${count} match(es) of ${re} in the config, found ${n}`);
  return text.replace(re, replacement);
}

function checkConfig(file, env = process.env) {
  return new Promise((resolve) => {
    const p = spawn(path.join(BIN, 'carpool'), ['--check-config', '-c', file], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => resolve({ code, out, err }));
  });
}

const close = (a, b) => a.length === b.length && a.every((x, i) => Math.abs(x - b[i]) < 1e-6);

let uniq = 0;
const prompt = (tag) => `cfg ${tag} #${++uniq} pid${process.pid}`;

// --- every config validates ----------------------------------------------------------------------------

const files = fs.readdirSync(CONFIGS).filter((f) => f.endsWith('.yaml')).sort();

test('configs/ holds the documented example and the four ready configs', () => {
  for (const f of ['carpool.yaml', 'sidecar-openai.yaml', 'vllm-gateway.yaml', 'llamacpp-gateway.yaml', 'tei-embeddings.yaml'])
    assert.ok(files.includes(f), `configs/${f} is missing`);
});

for (const f of files) {
  test(`carpool --check-config -c configs/${f} exits 0`, async (t) => {
    const file = path.join(CONFIGS, f);
    const text = fs.readFileSync(file, 'utf8');
    // --check-config checks what a start would: the credential named by api_key_env must be set
    // (it is, here, to a dummy), and every file and directory the config names must be usable.
    const env = { ...process.env };
    for (const [, name] of text.matchAll(/^\s*api_key_env: ([A-Z_][A-Z0-9_]*)/gm)) env[name] = 'sk-dummy-for-check';
    const r = await checkConfig(file, env);
    // A ready config may name production paths (/etc/carpool/keys, /run/carpool/) that do not exist
    // on a test machine: only then is the check repeated with those paths pointed at a temp dir,
    // everything else as written — and the first check must have named exactly those paths.
    const m = text.match(/^\s*keys_file: (\/\S+)/m);
    const u = text.match(/^\s*- address: unix:(\/run\/carpool)\//m);
    if (r.code !== 0 && ((m && !fs.existsSync(m[1])) || (u && !fs.existsSync(u[1])))) {
      if (m && !fs.existsSync(m[1])) assert.match(r.err, new RegExp(`${m[1]}: No such file`), `${r.out}${r.err}`);
      if (u && !fs.existsSync(u[1])) assert.match(r.err, new RegExp(`directory ${u[1]}: No such file`), `${r.out}${r.err}`);
      const dir = tmpdir();
      t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
      fs.writeFileSync(path.join(dir, 'keys'), 'sk-check-config\n');
      const copy = path.join(dir, f);
      let edited = m ? sub(text, /^(\s*keys_file: )\/\S+/gm, `$1${path.join(dir, 'keys')}`) : text;
      if (u) edited = edited.replace(/unix:\/run\/carpool\//g, `unix:${dir}/`);
      fs.writeFileSync(copy, edited);
      const r2 = await checkConfig(copy, env);
      assert.equal(r2.code, 0, `${r2.out}${r2.err}`);
      assert.match(r2.out, /: ok$/m);
      return;
    }
    assert.equal(r.code, 0, `${r.out}${r.err}`);
    assert.match(r.out, /: ok$/m);
  });
}

// --- sidecar-openai.yaml ------------------------------------------------------------------------------

test('sidecar-openai.yaml: a completion over the unix socket with an app key; OpenAI sees only carpool\'s credential', async (t) => {
  const SECRET = 'sk-upstream-sidecar-7c1d';
  const sim = await startSim(['--dialect', 'openai', '--step-ms', '2']);
  t.after(() => sim.kill());
  const dir = tmpdir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'carpool.sock');
  const keys = path.join(dir, 'keys');
  fs.writeFileSync(keys, '# the application\'s keys\nsk-app-sidecar-1\nsk-app-sidecar-2 max_concurrent=4 rpm=600\n');

  let y = readConfig('sidecar-openai.yaml');
  // these settings must stay as written
  assert.match(y, /^\s+mode: "0660"/m);
  assert.match(y, /^\s+api_key_env: OPENAI_API_KEY\b/m);
  assert.match(y, /^\s+dialect: openai\b/m);
  assert.match(y, /^\s+rate_limit_rpm: 500\b/m);
  assert.match(y, /^\s+verify: true\b/m);
  assert.match(y, /^\s+policy: adaptive\b/m);
  assert.match(y, /^\s+access: stdout\b/m);
  // /run/carpool does not exist here: the socket goes to a temp dir
  y = sub(y, /address: unix:\/run\/carpool\/carpool\.sock/g, `address: unix:${sock}`);
  // port 8080 may be taken: any free loopback port
  y = sub(y, /address: 127\.0\.0\.1:8080/g, 'address: 127.0.0.1:0');
  // api.openai.com → the sim, over http; the url's path (none) is kept, so a "/v1" prefix in the
  // config would make carpool call /v1/v1/completions and this test fail with the sim's 404
  y = sub(y, /url: https:\/\/api\.openai\.com(?=\s)/g, `url: ${sim.url}`);
  // /etc/carpool/keys → a temp keys file
  y = sub(y, /keys_file: \/etc\/carpool\/keys/g, `keys_file: ${keys}`);

  const cp = await startCarpool(y, { env: { OPENAI_API_KEY: SECRET } });
  t.after(() => cp.stop());
  const st = fs.statSync(sock);
  assert.ok(st.isSocket(), 'no unix socket');
  assert.equal(st.mode & 0o777, 0o660, `socket mode ${(st.mode & 0o777).toString(8)}`);

  const viaSocket = (body, key) => curl(['-sS', '-N', '-m', '10', '--unix-socket', sock, 'http://localhost/v1/completions',
    '-H', 'Content-Type: application/json', ...(key ? ['-H', `Authorization: Bearer ${key}`] : []),
    '-w', '\n%{http_code}', '-d', JSON.stringify(body)]);
  const split = (r) => { const i = r.out.lastIndexOf('\n'); return { status: Number(r.out.slice(i + 1)), body: r.out.slice(0, i) }; };

  // no key, wrong key: 401
  const none = split(await viaSocket({ model: 'gpt-3.5-turbo-instruct', prompt: 'x' }));
  assert.equal(none.status, 401, none.body);
  const wrong = split(await viaSocket({ model: 'gpt-3.5-turbo-instruct', prompt: 'x' }, 'sk-app-sidecar-X'));
  assert.equal(wrong.status, 401, wrong.body);

  // a completion with a key from the keys file
  const p = prompt('sidecar');
  const r = await viaSocket({ model: 'gpt-3.5-turbo-instruct', prompt: p, max_tokens: 6 }, 'sk-app-sidecar-1');
  assert.equal(r.code, 0, r.err);
  const res = split(r);
  assert.equal(res.status, 200, res.body);
  const j = JSON.parse(res.body);
  assert.equal(j.choices[0].text, expected(p, { maxTokens: 6 }).text);
  assert.equal(j.model, 'gpt-3.5-turbo-instruct');

  // and a stream with the other key (which has limits in the file)
  const p2 = prompt('sidecar-stream');
  const s = split(await viaSocket({ model: 'gpt-3.5-turbo-instruct', prompt: p2, max_tokens: 5, stream: true }, 'sk-app-sidecar-2'));
  assert.equal(s.status, 200, s.body);
  assert.equal(collect(parseSse(s.body)).text[0], expected(p2, { maxTokens: 5 }).text);

  // the loopback listener works too
  const p3 = prompt('sidecar-tcp');
  const tcp = await request(cp.port, 'POST', '/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: p3, max_tokens: 3 },
    { Authorization: 'Bearer sk-app-sidecar-1' });
  assert.equal(tcp.status, 200, tcp.body);
  assert.equal(JSON.parse(tcp.body).choices[0].text, expected(p3, { maxTokens: 3 }).text);

  // upstream: only carpool's credential, never an application key
  const stats = await sim.stats();
  assert.deepEqual(Object.keys(stats.auth), [`Bearer ${SECRET}`], JSON.stringify(stats.auth));
  assert.equal(stats.completion_calls, 3);
  assert.ok(!cp.log().includes(SECRET), 'the upstream secret is never logged');
  assert.ok(!cp.log().includes('sk-app-sidecar-1'), 'client keys are never logged');
  // access log to stdout: one JSON line per request
  const access = cp.log().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  assert.ok(access.some((a) => a.route === '/v1/completions' && a.status === 200), `no access log line:\n${cp.log()}`);
});

// --- vllm-gateway.yaml --------------------------------------------------------------------------------

test('vllm-gateway.yaml: concurrent completions spread over the fleet by model, exact usage', async (t) => {
  const sims = [];
  for (let i = 0; i < 3; i++) sims.push(await startSim(['--dialect', 'vllm', '--step-ms', '15']));
  t.after(() => Promise.all(sims.map((s) => s.kill())));

  let y = readConfig('vllm-gateway.yaml');
  assert.doesNotMatch(y, /max_inflight/); // room is counted in sequences, not capped in calls
  assert.equal((y.match(/^\s+load_poll_ms: 500\b/gm) || []).length, 3);
  assert.match(y, /^\s+max_batch_size: 64\b/m);
  assert.match(y, /^\s+policy: adaptive\b/m);
  assert.equal((y.match(/^\s+health_path: \/health\b/gm) || []).length, 3);
  assert.equal((y.match(/^\s+dialect: vllm\b/gm) || []).length, 3);
  // 0.0.0.0:8080 → any free loopback port (the commented-out TLS listener stays commented out)
  y = sub(y, /address: 0\.0\.0\.0:8080/g, 'address: 127.0.0.1:0');
  // vllm-1..3 → three vllm-dialect sims; models, weights and health checks are kept
  y = sub(y, /url: http:\/\/vllm-([123]):8000/g, (_, n) => `url: ${sims[Number(n) - 1].url}`, 3);

  const cp = await startCarpool(y);
  t.after(() => cp.stop());
  assert.equal(await readyz(cp.port), 200);

  const LLAMA = 'meta-llama/Llama-3.1-8B-Instruct';
  const QWEN = 'Qwen/Qwen2.5-7B-Instruct';
  const jobs = [];
  for (let i = 0; i < 48; i++) jobs.push({ model: LLAMA, prompt: prompt(`llama ${i}`), stream: i % 2 === 0 });
  for (let i = 0; i < 8; i++) jobs.push({ model: QWEN, prompt: prompt(`qwen ${i}`), stream: i % 2 === 1 });
  const res = await Promise.all(jobs.map((jb) => request(cp.port, 'POST', '/v1/completions', {
    model: jb.model, prompt: jb.prompt, max_tokens: 8, stream: jb.stream,
    ...(jb.stream ? { stream_options: { include_usage: true } } : {}),
  })));
  res.forEach((r, i) => {
    const jb = jobs[i];
    assert.equal(r.status, 200, r.body);
    assert.match(r.headers['x-carpool-batch'], /; size=\d+/);
    assert.equal(r.headers['x-carpool-usage'], 'exact');
    const want = expected(jb.prompt, { maxTokens: 8 });
    if (jb.stream) {
      const out = collect(parseSse(r.body));
      assert.equal(out.text[0], want.text, `stream ${i}`);
      assert.equal(out.done, 1);
      assert.equal(out.usage.completion_tokens, want.tokens.length, `usage of stream ${i}`);
      assert.equal(out.chunks[0].model, jb.model);
    } else {
      const j = JSON.parse(r.body);
      assert.equal(j.choices[0].text, want.text, `request ${i}`);
      assert.equal(j.usage.completion_tokens, want.tokens.length, `usage of request ${i}`);
      assert.equal(j.model, jb.model);
    }
  });
  const st = await Promise.all(sims.map((s) => s.stats()));
  const calls = st.map((s) => s.completion_calls);
  // the Llama model is served by vllm-1 and vllm-2 only, Qwen by vllm-3 only
  assert.equal(st[0].prompts + st[1].prompts, 48, `prompts per sim ${st.map((s) => s.prompts)}`);
  assert.equal(st[2].prompts, 8, `prompts per sim ${st.map((s) => s.prompts)}`);
  assert.ok(calls[0] > 0 && calls[1] > 0, `calls per sim ${calls}: the Llama traffic was not spread`);
  // (weight steers calls *in flight* per unit of weight within each worker's own pool, so with
  // several workers the totals are not a stable 2:1; only the spread itself is asserted)
  for (const s of st) assert.ok(s.max_prompts_per_call <= 64, `a call carried ${s.max_prompts_per_call} prompts`);
  // the servers' own load is read (GET /metrics): no "no load signals" warning
  assert.doesNotMatch(cp.log(), /no load signals/);

  // a model nobody serves
  const nobody = await request(cp.port, 'POST', '/v1/completions', { model: 'gpt-2', prompt: 'x' });
  assert.equal(nobody.status, 404);
  assert.equal(JSON.parse(nobody.body).error.code, 'model_not_found');
  // the per-upstream metrics name every server
  const m = await cp.metrics();
  for (const s of sims) assert.equal(m[`carpool_upstream_healthy{upstream="${s.url}"}`], 1);
});

// --- llamacpp-gateway.yaml ----------------------------------------------------------------------------

test('llamacpp-gateway.yaml: completions against llama.cpp-dialect servers with 8 slots', async (t) => {
  const sims = [];
  for (let i = 0; i < 2; i++) sims.push(await startSim(['--dialect', 'llamacpp', '--slots', '8', '--step-ms', '10']));
  t.after(() => Promise.all(sims.map((s) => s.kill())));

  let y = readConfig('llamacpp-gateway.yaml');
  assert.match(y, /^\s+max_batch_size: 8\b/m);
  assert.equal((y.match(/^\s+dialect: llamacpp\b/gm) || []).length, 2);
  assert.equal((y.match(/^\s+health_path: \/health\b/gm) || []).length, 2);
  y = sub(y, /address: 0\.0\.0\.0:8080/g, 'address: 127.0.0.1:0');
  // llama-1, llama-2 → two llamacpp-dialect sims started with --slots 8 (llama-server -np 8)
  y = sub(y, /url: http:\/\/llama-([12]):8080/g, (_, n) => `url: ${sims[Number(n) - 1].url}`, 2);

  const cp = await startCarpool(y);
  t.after(() => cp.stop());
  assert.equal(await readyz(cp.port), 200);

  const jobs = Array.from({ length: 40 }, (_, i) => ({ prompt: prompt(`llama.cpp ${i}`), stream: i % 3 !== 0 }));
  const res = await Promise.all(jobs.map((jb) => request(cp.port, 'POST', '/v1/completions',
    { model: 'any', prompt: jb.prompt, max_tokens: 10, stream: jb.stream })));
  res.forEach((r, i) => {
    const jb = jobs[i];
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers['x-carpool-usage'], 'exact');
    const want = expected(jb.prompt, { maxTokens: 10 });
    if (jb.stream) {
      const out = collect(parseSse(r.body));
      assert.equal(out.text[0], want.text, `stream ${i}`);
      assert.equal(out.finish[0], want.finish_reason);
      assert.equal(out.done, 1);
    } else {
      const j = JSON.parse(r.body);
      assert.equal(j.choices[0].text, want.text, `request ${i}`);
      assert.equal(j.usage.completion_tokens, want.tokens.length);
    }
  });
  const st = await Promise.all(sims.map((s) => s.stats()));
  assert.equal(st[0].prompts + st[1].prompts, 40);
  for (const s of st) {
    assert.ok(s.completion_calls > 0, `a llama.cpp server got no calls: ${st.map((x) => x.completion_calls)}`);
    assert.ok(s.max_prompts_per_call <= 8, `a call carried ${s.max_prompts_per_call} prompts, more than the 8 slots`);
  }

  // a client's two prompts, not streamed: llama.cpp's own shape, a JSON array of per-prompt objects
  const two = [prompt('pair a'), prompt('pair b')];
  const pair = await request(cp.port, 'POST', '/v1/completions', { model: 'any', prompt: two, max_tokens: 4 });
  assert.equal(pair.status, 200, pair.body);
  const arr = JSON.parse(pair.body);
  assert.ok(Array.isArray(arr) && arr.length === 2, pair.body);
  arr.forEach((o, k) => assert.equal(o.choices[0].text, expected(two[k], { maxTokens: 4 }).text));
  // n != 1, which llama-server refuses with a 500, is refused by carpool at once with a 400
  const n2 = await request(cp.port, 'POST', '/v1/completions', { model: 'any', prompt: 'n two', n: 2 });
  assert.equal(n2.status, 400, n2.body);
  assert.equal(JSON.parse(n2.body).error.param, 'n');
});

// --- tei-embeddings.yaml ------------------------------------------------------------------------------

test('tei-embeddings.yaml: 70 inputs against a TEI-like upstream limited to 32 inputs per call', async (t) => {
  const sim = await startSim(['--dialect', 'openai', '--max-inputs', '32', '--step-ms', '5']);
  t.after(() => sim.kill());

  let y = readConfig('tei-embeddings.yaml');
  assert.match(y, /^\s+max_inputs_per_call: 32\b/m);
  assert.match(y, /^\s+dialect: openai\b/m);
  assert.match(y, /^\s+health_path: \/health\b/m);
  y = sub(y, /address: 0\.0\.0\.0:8080/g, 'address: 127.0.0.1:0');
  // tei:80 → an openai-dialect sim that refuses more than 32 inputs per call, as TEI does
  y = sub(y, /url: http:\/\/tei:80(?=\s)/g, `url: ${sim.url}`);

  const cp = await startCarpool(y);
  t.after(() => cp.stop());
  assert.equal(await readyz(cp.port), 200);

  const big = Array.from({ length: 70 }, (_, i) => `tei input ${i} ${'x'.repeat(i % 7)}`);
  const small = Array.from({ length: 10 }, (_, i) => `tei small ${i}`);
  const [r, ...rs] = await Promise.all([
    request(cp.port, 'POST', '/v1/embeddings', { model: 'BAAI/bge-small-en-v1.5', input: big }),
    ...small.map((input) => request(cp.port, 'POST', '/v1/embeddings', { model: 'BAAI/bge-small-en-v1.5', input })),
  ]);
  assert.equal(r.status, 200, r.body);
  const j = JSON.parse(r.body);
  assert.equal(j.data.length, 70);
  j.data.forEach((d, k) => {
    assert.equal(d.index, k);
    assert.ok(close(d.embedding, embedding(big[k])), `input ${k}`);
  });
  rs.forEach((x, i) => {
    assert.equal(x.status, 200, x.body);
    const d = JSON.parse(x.body).data;
    assert.equal(d.length, 1);
    assert.ok(close(d[0].embedding, embedding(small[i])), `small ${i}`);
  });
  const st = await sim.stats();
  assert.ok(st.max_prompts_per_call <= 32, `a call carried ${st.max_prompts_per_call} inputs`);
  assert.equal(st.prompts, 80);
  assert.ok(st.embedding_calls >= 3, `${st.embedding_calls} calls for 80 inputs`);
});
