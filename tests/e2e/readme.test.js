// The README's client snippets, run as written (only the port changes): curl, and the Node SDK
// snippet as the ES module file the README says to save it as.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { test, ROOT, startSim, startCarpool, baseConfig, parseSse, collect, tmpdir } = require('./lib');
const { expected } = require('./simgen');

const README = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');

// The first ```lang block after the line containing `after`.
function snippet(after, lang) {
  const from = README.indexOf(after);
  assert.ok(from >= 0, `README has no "${after}"`);
  const m = README.slice(from).match(new RegExp('```' + lang + '\\n([\\s\\S]*?)```'));
  assert.ok(m, `no ${lang} block after "${after}"`);
  return m[1];
}

function run(file, args, opts) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 20000, ...opts }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, stdout, stderr }));
  });
}

test('README: the curl snippet and the Node SDK snippet work as written', async (t) => {
  const sim = await startSim(['--step-ms', '2']);
  const cp = await startCarpool(baseConfig(sim));
  const dir = tmpdir();
  t.after(async () => { await cp.stop(); await sim.kill(); fs.rmSync(dir, { recursive: true, force: true }); });
  const port = (text) => {
    assert.match(text, /127\.0\.0\.1:8080/);
    return text.replace(/127\.0\.0\.1:8080/g, `127.0.0.1:${cp.port}`);
  };

  const sh = port(snippet('With curl:', 'sh'));
  const c = await run('bash', ['-c', sh]);
  assert.equal(c.code, 0, c.stderr);
  const want = JSON.parse(sh.match(/-d '(.*)'/)[1]);
  assert.equal(collect(parseSse(c.stdout)).text[0], expected(want.prompt, { maxTokens: want.max_tokens }).text);

  // hello.mjs beside an installed openai package, as after `npm install openai`
  fs.symlinkSync(path.join(__dirname, 'node_modules'), path.join(dir, 'node_modules'));
  const js = port(snippet('With the official OpenAI SDK', 'js'));
  assert.match(README, /save it as\s+`hello\.mjs`/);
  fs.writeFileSync(path.join(dir, 'hello.mjs'), js);
  const env = { ...process.env };
  delete env.OPENAI_API_KEY;
  const ok = await run(process.execPath, ['hello.mjs'], { cwd: dir, env: { ...env, OPENAI_API_KEY: 'sk-anything' } });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, expected('Hello', { maxTokens: 32 }).text);
  // what the README warns of: without OPENAI_API_KEY the SDK refuses to start, carpool or not
  const nokey = await run(process.execPath, ['hello.mjs'], { cwd: dir, env });
  assert.notEqual(nokey.code, 0);
  assert.match(nokey.stderr, /OPENAI_API_KEY/);
});
