// 500 concurrent streaming clients with unique prompts through carpool: each verifies every token
// (bin/carpool-loadgen checks them against the simulator's deterministic output).
'use strict';
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { test, startSim, startCarpool, baseConfig, BIN } = require('./lib');

function loadgen(args) {
  return new Promise((resolve) => {
    const p = spawn(path.join(BIN, 'carpool-loadgen'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT ')) || '';
      const r = {};
      for (const kv of line.slice(7).split(' ')) { const [k, v] = kv.split('='); if (k) r[k] = Number(v); }
      resolve({ code, r, out, err });
    });
  });
}

for (const [policy, mode] of [['fixed', 'stream'], ['adaptive', 'stream'], ['adaptive', 'nonstream']]) {
  test(`500 concurrent ${mode} clients (${policy} policy): zero mismatches, far fewer upstream calls`, async (t) => {
    const sim = await startSim(['--dialect', 'vllm', '--step-ms', '20']);
    const cp = await startCarpool(baseConfig(sim, {
      batching: { policy, max_wait_ms: 20, max_batch_size: 64 },
      upstream: { max_inflight: 8 },
    }));
    t.after(async () => { await cp.stop(); await sim.kill(); });
    const res = await loadgen(['--url', cp.url, '--concurrency', '500', '--requests', '1', '--mode', mode,
      '--prefix', `${policy}-${mode}-`, '--timeout-s', '60', '--quiet']);
    assert.equal(res.code, 0, `loadgen failed:\n${res.out}\n${res.err}`);
    assert.equal(res.r.requests, 500);
    assert.equal(res.r.ok, 500);
    assert.equal(res.r.mismatches, 0);
    assert.equal(res.r.errors, 0);
    const st = await sim.stats();
    assert.equal(st.prompts, 500);
    assert.ok(st.completion_calls <= 500 / 4, `${st.completion_calls} upstream calls for 500 requests`);
    assert.ok(st.max_prompts_per_call <= 64);
    const m = await cp.metrics();
    assert.equal(m.carpool_requests_total, 500);
    assert.equal(m.carpool_requests_active, 0);
    t.diagnostic(`upstream calls ${st.completion_calls}, prompts/call ${(500 / st.completion_calls).toFixed(1)}, ` +
      `ttft p50 ${res.r.ttft_p50_ms} ms`);
  });
}
