// `carpool --check-config` checks everything a start would check, like `nginx -t`: the files the config
// names (TLS cert and key, and that they match; CA file; the access log's and a unix socket's
// directory), the environment (api_key_env), and it reports every problem, not only the first.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { test, BIN, tmpdir, makeCerts: makeCertsIn } = require('./lib');

const makeCerts = (d) => { fs.mkdirSync(d, { recursive: true }); return makeCertsIn(d); };

const dir = tmpdir();
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

// Runs --check-config on yaml, and (unless it is meant to be good) a start of the same file.
function check(yaml, env = {}, { start = true } = {}) {
  const f = path.join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  fs.writeFileSync(f, yaml);
  const envs = { ...process.env, ...env };
  const t = spawnSync(path.join(BIN, 'carpool'), ['--check-config', '-c', f], { encoding: 'utf8', env: envs });
  const s = start ? spawnSync(path.join(BIN, 'carpool'), ['-c', f], { encoding: 'utf8', env: envs, timeout: 10000 }) : null;
  return { code: t.status, out: t.stdout, err: t.stderr, file: f, start: s };
}

const upstream = 'upstreams:\n  - url: http://127.0.0.1:9\n';
const listen = 'listen:\n  - address: 127.0.0.1:0\n';

// One problem at a time: --check-config exits 1 with the message, and a start refuses the same way.
const cases = [
  ['a missing TLS cert', () => `listen:\n  - address: 127.0.0.1:0\n    tls: {cert: ${dir}/none.pem, key: ${dir}/none-key.pem}\n${upstream}`,
    /listen\[0\]\.tls .*none\.pem: No such file or directory/],
  ['a TLS key that does not match its cert', (c) => `listen:\n  - address: 127.0.0.1:0\n    tls: {cert: ${c.cert}, key: ${c.otherKey}}\n${upstream}`,
    /listen\[0\]\.tls: key .* cannot be used with cert .*mismatch/],
  ['a missing ca_file', () => `${listen}upstreams:\n  - url: https://127.0.0.1:9\n    tls: {ca_file: ${dir}/no-ca.pem}\n`,
    /upstreams\[0\]\.tls\.ca_file .*no-ca\.pem: No such file or directory/],
  ['a ca_file with no certificate', (c) => `${listen}upstreams:\n  - url: https://127.0.0.1:9\n    tls: {ca_file: ${c.otherKey}}\n`,
    /upstreams\[0\]\.tls\.ca_file .*: no PEM certificate could be loaded/],
  ['an access log in a directory that does not exist', () => `${listen}${upstream}log:\n  access: ${dir}/no/such/dir/access.log\n`,
    /log\.access .*access\.log: directory .*no\/such\/dir: No such file or directory/],
  ['a unix socket in a directory that does not exist', () => `listen:\n  - address: unix:${dir}/nodir/c.sock\n${upstream}`,
    /listen\[0\] .*nodir\/c\.sock: directory .*nodir: No such file or directory/],
  ['an unset api_key_env', () => `${listen}upstreams:\n  - url: http://127.0.0.1:9\n    api_key_env: CARPOOL_TEST_NEVER_SET\n`,
    /upstreams\[0\]\.api_key_env: CARPOOL_TEST_NEVER_SET is not set/],
  ['port 99999', () => `listen:\n  - address: 127.0.0.1:99999\n${upstream}`, /address "127\.0\.0\.1:99999": the port is out of range \(0-65535\)/],
  ['localhost:0', () => `listen:\n  - address: localhost:0\n${upstream}`, /address "localhost:0": port 0 \(any free port\) needs a numeric address/],
  ['an unknown key with a near name', () => `${listen}${upstream}batching:\n  max_batch_sise: 8\n`,
    /:\d+:\d+: unknown key "max_batch_sise" in batching; did you mean "max_batch_size"\?/],
];

let certs;
function certsOnce() {
  if (!certs) {
    const a = makeCerts(path.join(dir, 'a'));
    const b = makeCerts(path.join(dir, 'b'));
    certs = { cert: a.cert, otherKey: b.key };
  }
  return certs;
}

for (const [name, yaml, re] of cases) {
  test(`--check-config: ${name} -> exit 1 and a precise message; a start refuses it too`, () => {
    const r = check(yaml(certsOnce()));
    assert.equal(r.code, 1, `exit ${r.code}: ${r.out}${r.err}`);
    assert.match(r.err, re);
    assert.ok(!/: ok$/m.test(r.out), r.out);
    assert.notEqual(r.start.status, 0, `a start accepted what the check refused: ${r.start.stderr}`);
    assert.match(r.start.stderr, re, 'a start reports the same problem');
  });
}

test('--check-config: every problem is reported, not only the first', () => {
  const c = certsOnce();
  const r = check(`listen:\n  - address: 127.0.0.1:0\n    tls: {cert: ${c.cert}, key: ${c.otherKey}}\n  - address: unix:${dir}/nodir/x.sock\n` +
    `upstreams:\n  - url: https://127.0.0.1:9\n    api_key_env: CARPOOL_TEST_NEVER_SET\n    tls: {ca_file: ${dir}/no-ca.pem}\n` +
    `log:\n  access: ${dir}/no/dir/a.log\n`);
  assert.equal(r.code, 1);
  for (const re of [/listen\[0\]\.tls/, /listen\[1\]/, /api_key_env/, /ca_file/, /log\.access/]) assert.match(r.err, re);
  assert.match(r.err, /: 5 problems found$/m);
  const bad = check(`${listen}${upstream}batching:\n  max_batch_sise: 8\n  policy: sometimes\nworkerz: 2\n`);
  assert.equal(bad.code, 1);
  const lines = bad.err.trim().split('\n');
  assert.equal(lines.length, 3, bad.err);
  assert.match(lines[0], /unknown key "max_batch_sise" in batching; did you mean "max_batch_size"/);
  assert.match(lines[1], /policy: "sometimes" is not one of: adaptive, fixed/);
  assert.match(lines[2], /unknown key "workerz" at the top level; did you mean "workers"/);
});

test('--check-config: a directory as the config file gets a precise message', () => {
  const r = spawnSync(path.join(BIN, 'carpool'), ['--check-config', '-c', dir], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /: a directory, not a config file/);
});

test('--check-config: a config whose files and environment are all in place is ok', () => {
  const c = makeCerts(path.join(dir, 'good'));
  const r = check(`listen:\n  - address: 127.0.0.1:0\n    tls: {cert: ${c.cert}, key: ${c.key}}\n  - address: unix:${dir}/ok.sock\n` +
    `upstreams:\n  - url: https://127.0.0.1:9\n    api_key_env: CARPOOL_TEST_SET\n    tls: {ca_file: ${c.cert}}\n` +
    `log:\n  access: ${dir}/access.log\n`, { CARPOOL_TEST_SET: 'sk-x' }, { start: false });
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /: ok$/m);
  assert.ok(!fs.existsSync(`${dir}/access.log`), 'the check created the access log');
  assert.ok(!fs.existsSync(`${dir}/ok.sock`), 'the check created the socket');
});
