// The command line, config validation errors (file:line:column), https upstreams with a test CA,
// the unix socket listener, and stopping on signals.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const http = require('node:http');
const { spawn, execFileSync } = require('node:child_process');
const { test, ROOT, BIN, startSim, startCarpool, baseConfig, request, parseSse, collect, curl, tmpdir, makeCerts } = require('./lib');
const { expected } = require('./simgen');

const CARPOOL = path.join(BIN, 'carpool');

function run(args, timeoutMs = 10000) {
  return new Promise((resolve) => {
    const p = spawn(CARPOOL, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code, sig) => { clearTimeout(timer); resolve({ code, sig, out, err }); });
  });
}

let uniq = 0;
function prompt(tag) {
  uniq++;
  return `cli ${tag} #${uniq} pid${process.pid}`;
}

test('--version (and -V): version, git revision, and the versions of the libraries loaded', async () => {
  const r = await run(['--version']);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(await run(['-V']), r);
  const [first, libs, ...rest] = r.out.trimEnd().split('\n');
  assert.equal(rest.length, 0, r.out);
  const m = first.match(/^carpool \d+\.\d+\.\d+ \(git (unknown|[0-9a-f]{7,40}(?:-dirty)?)\)$/);
  assert.ok(m, first);
  if (m[1] !== 'unknown') // a commit of this repository
    execFileSync('git', ['-C', ROOT, 'cat-file', '-e', `${m[1].replace(/-dirty$/, '')}^{commit}`]);
  const l = libs.match(/^libevent (\S+), OpenSSL (\d+\.\d+\.\d+)\S* .*, cJSON (\S+), libyaml (\S+)$/);
  assert.ok(l, libs);
  // the same as the installed development packages (pkg-config) and the openssl command say
  const pc = (mod) => execFileSync('pkg-config', ['--modversion', mod]).toString().trim();
  assert.deepEqual([l[1], l[3], l[4]], [pc('libevent'), pc('libcjson'), pc('yaml-0.1')]);
  assert.match(execFileSync('openssl', ['version']).toString(), new RegExp(`^OpenSSL ${l[2].replace(/\./g, '\\.')}\\b`));
});

test('--help exits 0 and shows usage', async () => {
  const r = await run(['--help']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /usage: carpool/);
  assert.match(r.out, /--check-config/);
  assert.deepEqual(await run(['-h']), r);
});

test('no arguments -> the default config /etc/carpool/carpool.yaml, or a message naming it and the usage', async () => {
  if (require('node:fs').existsSync('/etc/carpool/carpool.yaml')) {
    // a machine with carpool installed: the default is what a bare `carpool -t` checks
    const t = await run(['-t']);
    assert.match(t.out + t.err, /\/etc\/carpool\/carpool\.yaml/);
    return;
  }
  const r = await run([]);
  assert.equal(r.code, 1);
  assert.equal(r.sig, null);
  assert.match(r.err, /no -c FILE given, and the default config \/etc\/carpool\/carpool\.yaml: No such file or directory/);
  assert.match(r.err, /usage: carpool \[-t\] \[-c FILE\]/);
});

test('an unknown option -> non-zero exit', async () => {
  const r = await run(['--frobnicate']);
  assert.notEqual(r.code, 0);
});

test('a missing config file -> non-zero exit naming the file', async () => {
  const r = await run(['--check-config', '-c', '/nonexistent/carpool.yaml']);
  assert.notEqual(r.code, 0);
  assert.match(r.err, /\/nonexistent\/carpool\.yaml/);
});

const GOOD = `listen:
  - address: "127.0.0.1:0"
upstreams:
  - url: "http://127.0.0.1:9"
    dialect: vllm
    max_inflight: 4
batching:
  policy: fixed
  max_wait_ms: 5
  max_batch_size: 32
limits:
  max_body_bytes: 65536
timeouts:
  connect_ms: 1000
log:
  level: warn
`;

test('--check-config -c good.yaml exits 0', async () => {
  const dir = tmpdir();
  try {
    const f = path.join(dir, 'good.yaml');
    fs.writeFileSync(f, GOOD);
    const r = await run(['--check-config', '-c', f]);
    assert.equal(r.code, 0, r.err + r.out);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('--help lists every flag, short and long, and each one listed works', async () => {
  const help = (await run(['--help'])).out;
  const flags = [...help.matchAll(/^ {2}-(\w), --([\w-]+)/gm)].map((m) => `-${m[1]} --${m[2]}`);
  // getopt's option table in src/main.c, every entry
  const src = fs.readFileSync(path.join(ROOT, 'src', 'main.c'), 'utf8');
  const table = [...src.matchAll(/\{"([\w-]+)", \w+_argument, NULL, '(\w)'\}/g)].map((m) => `-${m[2]} --${m[1]}`);
  assert.ok(table.length >= 4, 'the option table was not found in src/main.c');
  assert.deepEqual(flags.sort(), table.sort(), help);
  const dir = tmpdir();
  try {
    const f = path.join(dir, 'good.yaml');
    fs.writeFileSync(f, GOOD);
    for (const args of [['-t', '-c', f], ['--check-config', '--config', f], [`--config=${f}`, '-t']]) {
      const r = await run(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.out, `${f}: ok\n`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// Each bad file: its text, and the token whose position (occurrence `nth`, 1-based line and column)
// the error must name; `at: [line, col]` instead gives the position directly.
const BAD = [
  {
    name: 'unknown key',
    text: GOOD.replace('    max_inflight: 4\n', '    max_inflight: 4\n    bogus_key: 1\n'),
    token: 'bogus_key', msg: /unknown key/,
  },
  {
    name: 'duplicate key',
    text: GOOD.replace('  max_wait_ms: 5\n', '  max_wait_ms: 5\n  max_wait_ms: 6\n'),
    token: 'max_wait_ms', nth: 2, msg: /duplicate/,
  },
  {
    name: 'wrong type (a string for an integer)',
    text: GOOD.replace('max_inflight: 4', 'max_inflight: lots'),
    token: 'lots', msg: /max_inflight/,
  },
  {
    name: 'wrong type (a mapping for a list)',
    text: GOOD.replace('listen:\n  - address: "127.0.0.1:0"\n', 'listen:\n  address: "127.0.0.1:0"\n'),
    token: 'address', msg: /listen/,
  },
  {
    name: 'out of range (max_batch_size: 0)',
    text: GOOD.replace('max_batch_size: 32', 'max_batch_size: 0'),
    token: 'max_batch_size: 0', offset: 'max_batch_size: '.length, msg: /max_batch_size/,
  },
  {
    name: 'bad enum (policy: sometimes)',
    text: GOOD.replace('policy: fixed', 'policy: sometimes'),
    token: 'sometimes', msg: /policy/,
  },
  {
    name: 'upstream url ending in /v1 (carpool adds /v1/... itself)',
    text: GOOD.replace('"http://127.0.0.1:9"', '"http://127.0.0.1:9/v1/"'),
    token: '"http://127.0.0.1:9/v1/"', msg: /upstreams\[0\]: url "http:\/\/127\.0\.0\.1:9\/v1\/" ends in \/v1.*\/v1\/v1\/completions.*write "http:\/\/127\.0\.0\.1:9"$/,
  },
  {
    name: 'upstream url with a path prefix ending in /v1',
    text: GOOD.replace('"http://127.0.0.1:9"', '"http://127.0.0.1:9/openai/v1"'),
    token: '"http://127.0.0.1:9/openai/v1"', msg: /ends in \/v1.*write "http:\/\/127\.0\.0\.1:9\/openai"$/,
  },
  {
    name: 'missing upstreams',
    text: GOOD.replace('upstreams:\n  - url: "http://127.0.0.1:9"\n    dialect: vllm\n    max_inflight: 4\n', ''),
    at: [1, 1], msg: /upstream/,
  },
];

function position(text, token, nth = 1, offset = 0) {
  const lines = text.split('\n');
  let seen = 0;
  for (let i = 0; i < lines.length; i++) {
    let from = 0;
    for (;;) {
      const c = lines[i].indexOf(token, from);
      if (c < 0) break;
      seen++;
      if (seen === nth) return [i + 1, c + 1 + offset];
      from = c + 1;
    }
  }
  throw new Error(`token ${token} not in text`);
}

for (const b of BAD) {
  test(`bad config: ${b.name} -> non-zero exit and FILE:LINE:COLUMN`, async () => {
    const dir = tmpdir();
    try {
      const f = path.join(dir, 'bad.yaml');
      if (b.name === 'missing upstreams') assert.ok(!b.text.includes('upstreams'), b.text);
      fs.writeFileSync(f, b.text);
      const [line, col] = b.at || position(b.text, b.token, b.nth, b.offset);
      for (const args of [['--check-config', '-c', f], ['-c', f]]) {
        const r = await run(args);
        assert.notEqual(r.code, 0, `${args.join(' ')} accepted a bad file:\n${b.text}`);
        assert.equal(r.sig, null);
        const m = r.err.match(/([^\s:]+):(\d+):(\d+): (.*)/);
        assert.ok(m, `no FILE:LINE:COLUMN in stderr: ${r.err}`);
        assert.equal(m[1], f);
        assert.deepEqual([Number(m[2]), Number(m[3])], [line, col], `wrong position: ${r.err}`);
        assert.match(m[4], b.msg);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

// --- TLS upstream --------------------------------------------------------------------------------


async function completion(cp, tag) {
  const p = prompt(tag);
  const r = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: p, max_tokens: 6, stream: true },
    {}, { timeoutMs: 10000 });
  return { p, r };
}

function assertRight({ p, r }) {
  assert.equal(r.status, 200, r.body);
  const out = collect(parseSse(r.body));
  assert.equal(out.errors.length, 0, r.body);
  assert.equal(out.done, 1);
  assert.equal(out.text[0], expected(p, { maxTokens: 6 }).text);
}

test('https upstream: CA file, system CAs, verify off, DNS name', async (t) => {
  const dir = tmpdir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = makeCerts(dir);
  const sim = await startSim(['--tls-cert', certs.cert, '--tls-key', certs.key]);
  t.after(() => sim.kill());
  const ipUrl = `https://127.0.0.1:${sim.port}`;
  const dnsUrl = `https://localhost:${sim.port}`;

  await t.test('with tls.ca_file = the test CA: works', async () => {
    const cp = await startCarpool(baseConfig({ url: ipUrl }, { upstream: { dialect: 'vllm', tls: { ca_file: certs.ca } } }));
    try {
      assertRight(await completion(cp, 'tls-ca'));
      const j = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: prompt('tls-ca-json'), max_tokens: 3 });
      assert.equal(j.status, 200, j.body);
    } finally {
      await cp.stop();
    }
  });

  await t.test('with the system CAs only: the certificate is rejected -> 502, and carpool logs it', async () => {
    const cp = await startCarpool(baseConfig({ url: ipUrl }, { upstream: { dialect: 'vllm' } }));
    try {
      const { r } = await completion(cp, 'tls-system');
      assert.equal(r.status, 502, r.body);
      const j = JSON.parse(r.body);
      assert.equal(typeof j.error.message, 'string');
      assert.ok('param' in j.error && 'code' in j.error);
      assert.match(cp.log(), new RegExp(`(warn|error).*${ipUrl.replace(/[.:/]/g, '\\$&')}`), cp.log());
      t.diagnostic(`log on rejection: ${cp.log().split('\n').filter((l) => / (warn|error) /.test(l)).join(' | ')}`);
    } finally {
      await cp.stop();
    }
  });

  await t.test('with tls.verify false: works, and a warning is logged', async () => {
    const cp = await startCarpool(baseConfig({ url: ipUrl }, { upstream: { dialect: 'vllm', tls: { verify: false } } }));
    try {
      assertRight(await completion(cp, 'tls-noverify'));
      assert.match(cp.log(), / warn .*verif/i, cp.log());
    } finally {
      await cp.stop();
    }
  });

  await t.test('https://localhost with the CA: works (host name checked against the DNS SAN)', async () => {
    const cp = await startCarpool(baseConfig({ url: dnsUrl }, { upstream: { dialect: 'vllm', tls: { ca_file: certs.ca } } }));
    try {
      assertRight(await completion(cp, 'tls-dns'));
    } finally {
      await cp.stop();
    }
  });

  await t.test('a host name that is not in the certificate is rejected', async () => {
    // 127.0.0.2 reaches the same listener on Linux loopback but is not in the SAN list
    const cp = await startCarpool(baseConfig({ url: `https://127.0.0.2:${sim.port}` }, { upstream: { dialect: 'vllm', tls: { ca_file: certs.ca } } }));
    try {
      const { r } = await completion(cp, 'tls-wrong-name');
      assert.ok(r.status === 502, `${r.status} ${r.body}`);
    } finally {
      await cp.stop();
    }
  });
});

// --- unix socket listener ---------------------------------------------------------------------------

test('unix socket listener with mode 0600: curl --unix-socket works; the file mode is 0600', async (t) => {
  const sim = await startSim();
  t.after(() => sim.kill());
  const dir = tmpdir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'cp.sock');
  const cfg = baseConfig(sim, { upstream: { dialect: 'vllm' } });
  cfg.listen.push({ address: `unix:${sock}`, mode: '0600' });
  const cp = await startCarpool(cfg);
  let stopped = false;
  t.after(() => { if (!stopped) cp.proc.kill('SIGKILL'); });
  const st = fs.statSync(sock);
  assert.ok(st.isSocket(), 'not a socket');
  assert.equal(st.mode & 0o777, 0o600, `mode ${(st.mode & 0o777).toString(8)}`);
  const p = prompt('unix');
  const res = await curl(['-sS', '-m', '10', '--unix-socket', sock, 'http://x/v1/completions',
    '-H', 'Content-Type: application/json', '-d', JSON.stringify({ model: 'sim-model', prompt: p, max_tokens: 5 })]);
  assert.equal(res.code, 0, res.err);
  const j = JSON.parse(res.out);
  assert.equal(j.choices[0].text, expected(p, { maxTokens: 5 }).text);
  // and streaming over the socket
  const p2 = prompt('unix-stream');
  const res2 = await curl(['-sS', '-N', '-m', '10', '--unix-socket', sock, 'http://x/v1/completions',
    '-H', 'Content-Type: application/json', '-d', JSON.stringify({ model: 'sim-model', prompt: p2, max_tokens: 5, stream: true })]);
  assert.equal(res2.code, 0, res2.err);
  const out = collect(parseSse(res2.out));
  assert.equal(out.text[0], expected(p2, { maxTokens: 5 }).text);
  await cp.stop();
  stopped = true;
  assert.ok(!fs.existsSync(sock), 'the socket file was left behind after a clean stop');
});

// --- signals ------------------------------------------------------------------------------------------

for (const sig of ['SIGINT', 'SIGTERM']) {
  test(`${sig} stops carpool with exit 0`, async (t) => {
    const sim = await startSim();
    t.after(() => sim.kill());
    const cp = await startCarpool(baseConfig(sim, { upstream: { dialect: 'vllm' } }));
    t.after(() => { if (cp.proc.exitCode === null && cp.proc.signalCode === null) cp.proc.kill('SIGKILL'); });
    const p = prompt(`sig-${sig}`);
    const ok = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: p, max_tokens: 3 },
      { Connection: 'close' }, { agent: new http.Agent({ keepAlive: false }) });
    assert.equal(ok.status, 200, ok.body);
    const t0 = Date.now();
    const exited = new Promise((resolve) => cp.proc.once('exit', (code, s) => resolve({ code, s })));
    cp.proc.kill(sig);
    const { code, s } = await exited;
    assert.equal(s, null, `carpool died of ${s}`);
    assert.equal(code, 0, cp.log());
    assert.ok(Date.now() - t0 < 5000, `stopping took ${Date.now() - t0} ms`);
    await cp.stop(); // checks the log
  });
}
