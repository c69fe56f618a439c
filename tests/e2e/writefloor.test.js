// bench/writefloor.c, the write floor of bench/run-bench.sh: the io_uring way (--io uring) sends what
// the write() way sends, with one submit per step, and what a full socket refused goes again until
// the reader has every byte (the tool exits 1 when the reader's count falls short).
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { test, BIN } = require('./lib');

function writefloor(args) {
  return new Promise((resolve) => {
    execFile(path.join(BIN, 'carpool-writefloor'), args, { timeout: 50000 }, (err, stdout, stderr) => {
      const line = stdout.split('\n').find((l) => l.startsWith('RESULT ')) || '';
      const kv = Object.fromEntries(line.split(' ').slice(1).map((f) => f.split('=')));
      resolve({ code: err ? err.code : 0, stdout, stderr, kv });
    });
  });
}

// A kernel or container without io_uring (seccomp, kernel.io_uring_disabled) fails the ring's setup:
// the io_uring tests are skipped there, and say so.
let uringMissing;
async function skipWithoutUring(t) {
  if (uringMissing === undefined) {
    const r = await writefloor(['--io', 'uring', '--conns', '1', '--step-ms', '0', '--steps', '1']);
    uringMissing = r.code !== 0 && /io_uring_queue_init/.test(r.stderr) ? r.stderr.split('\n')[0] : '';
  }
  if (uringMissing) t.skip(`io_uring is not available here: ${uringMissing}`);
  return !!uringMissing;
}

test('--io uring: one submit per step, every event delivered', async (t) => {
  if (await skipWithoutUring(t)) return;
  const r = await writefloor(['--io', 'uring', '--conns', '16', '--step-ms', '5', '--steps', '10']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.kv.io, 'uring');
  assert.equal(r.kv.steps, '10');
  assert.equal(r.kv.writes, '160');
  assert.equal(r.kv.submits, '10', r.stdout);
  const w = await writefloor(['--conns', '16', '--step-ms', '5', '--steps', '10']);
  assert.equal(w.code, 0, w.stderr);
  assert.equal(w.kv.io, 'write');
  assert.equal(w.kv.writes, '160');
});

test('--io uring: sends a full socket refuses go again until the reader has every byte', async (t) => {
  if (await skipWithoutUring(t)) return;
  // 1 MiB events, back to back: more than a loopback socket takes at once
  const r = await writefloor(['--io', 'uring', '--conns', '4', '--step-ms', '0', '--steps', '20', '--bytes', '1048576']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.kv.writes, '80');
  assert.ok(Number(r.kv.resubmits) > 0, r.stdout);
  assert.ok(Number(r.kv.submits) > 20, r.stdout);
});

test('--io takes write or uring only', async () => {
  const r = await writefloor(['--io', 'splice', '--steps', '1']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /bad value for --io/);
});
