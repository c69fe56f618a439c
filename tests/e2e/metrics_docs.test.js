// The README's table of /metrics families matches what carpool exports, both ways: every family
// scraped is documented with its type, labels and buckets, and every documented family is exported
// (issue 11 item 9), so the docs cannot drift from the code.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test, ROOT, startSim, startCarpool, baseConfig, request } = require('./lib');

// { family: { type, labels: [names], buckets: [numbers] | null } } from the README's table.
function documented() {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### Metrics and logs'));
  const out = {};
  for (const line of section.slice(0, section.indexOf('\n### ')).split('\n')) {
    const m = line.match(/^\| `(carpool_\w+)` \| (\w+) \| ([^|]*) \| (.*) \|$/);
    if (!m) continue;
    assert.ok(!out[m[1]], `${m[1]} is documented twice`);
    const b = m[4].match(/buckets: ([\d., ]+)$/);
    out[m[1]] = {
      type: m[2],
      labels: m[3].split(',').map((x) => x.trim()).filter(Boolean).sort(),
      buckets: b ? b[1].split(',').map(Number) : null,
    };
  }
  return out;
}

// The same from a scrape: types from the # TYPE lines, label names and le bounds from the samples.
function scraped(text) {
  const out = {};
  for (const line of text.split('\n')) {
    const t = line.match(/^# TYPE (\w+) (\w+)$/);
    if (t) out[t[1]] = { type: t[2], labels: new Set(), buckets: [] };
  }
  for (const line of text.split('\n')) {
    const s = line.match(/^(\w+)(?:\{([^}]*)\})? \S+$/);
    if (!s) continue;
    const fam = out[s[1]] ? s[1] : s[1].replace(/_(bucket|sum|count)$/, '');
    assert.ok(out[fam], `sample ${line} has no # TYPE`);
    for (const kv of (s[2] || '').split(',').filter(Boolean)) {
      const [k, v] = kv.split('=');
      out[fam].labels.add(k);
      if (k === 'le' && v !== '"+Inf"') out[fam].buckets.push(Number(JSON.parse(v)));
    }
  }
  for (const f of Object.values(out)) {
    f.labels = [...f.labels].sort();
    f.buckets = f.type === 'histogram' ? f.buckets : null;
  }
  return out;
}

test('every /metrics family is in the README table with its type, labels and buckets, and nothing else is', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim, { workers: 2 }));
  t.after(async () => { await cp.stop(); await sim.kill(); });
  // traffic, so that the labelled families have samples to show their labels
  assert.equal((await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: 'm', max_tokens: 2 })).status, 200);
  assert.equal((await request(cp.port, 'POST', '/v1/chat/completions', { model: 'sim-model', messages: [{ role: 'user', content: 'm' }] })).status, 200);
  await request(cp.port, 'GET', '/readyz');
  const text = (await request(cp.port, 'GET', '/metrics')).body;
  // pass-through and carpool's own endpoints are routes of their own
  assert.match(text, /^carpool_http_requests_total\{route="other",status="200"\} 1$/m);
  assert.match(text, /^carpool_http_requests_total\{route="local",status="(200|503)"\} 1$/m);
  const got = scraped(text);
  const doc = documented();
  assert.ok(Object.keys(doc).length >= 30, `the README table lists ${Object.keys(doc).length} families`);
  const missing = Object.keys(got).filter((f) => !doc[f]);
  const stale = Object.keys(doc).filter((f) => !got[f]);
  assert.deepEqual(missing, [], 'exported but not in the README table');
  assert.deepEqual(stale, [], 'in the README table but not exported');
  for (const [f, d] of Object.entries(doc)) {
    assert.equal(got[f].type, d.type, `${f}: type`);
    assert.deepEqual(got[f].labels, d.labels, `${f}: labels`);
    assert.deepEqual(got[f].buckets, d.buckets, `${f}: buckets`);
  }
});
