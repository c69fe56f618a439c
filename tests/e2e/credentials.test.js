// Which credential reaches the upstream, on every route, for every credential setup. The simulator
// logs the Authorization and the prompts of every request it gets (/stats "requests"), so each
// assertion below can fail. The promises (docs/carpool.1, "auth"):
//  - client keys (auth.keys) never reach an upstream;
//  - carpool's own credential (api_key_env) always wins when the upstream has one;
//  - with neither, the client's own key is forwarded, and two keys never share a call.
'use strict';
const assert = require('node:assert/strict');
const { test, startSim, startCarpool, request, parseSse, collect, assertEmbeddings } = require('./lib');
const { expected } = require('./simgen');

const SECRET = 'upstream-secret-c7e1';
const KEYS = ['sk-client-alpha', 'sk-client-beta'];
const bearer = (k) => ({ Authorization: `Bearer ${k}` });

// own(i): whether upstream i has api_key_env; want(key, i): the Authorization upstream i must get
// from the client with that key; keyed: the client's credential keys the batch (it is forwarded).
const SETUPS = [
  { name: 'client keys and api_key_env', keys: true, own: () => true, keyed: false,
    promise: "client keys never reach an upstream; carpool's own credential wins", want: () => `Bearer ${SECRET}` },
  { name: 'client keys, no api_key_env', keys: true, own: () => false, keyed: false,
    promise: 'client keys never reach an upstream (none is sent)', want: () => '' },
  { name: 'api_key_env, no client keys', keys: false, own: () => true, keyed: false,
    promise: "carpool's own credential always wins over the client's", want: () => `Bearer ${SECRET}` },
  { name: 'neither', keys: false, own: () => false, keyed: true,
    promise: "with neither, the client's own key is forwarded", want: (k) => `Bearer ${k}` },
  // two upstreams, only the first with api_key_env: each keeps its own rule
  { name: 'api_key_env on one upstream of two', keys: false, own: (i) => i === 0, keyed: true, nups: [2],
    promise: "carpool's own credential wins where it has one; elsewhere the client's key is forwarded",
    want: (k, i) => (i === 0 ? `Bearer ${SECRET}` : `Bearer ${k}`) },
];

// The key a prompt was sent with: every prompt of this file names it.
const ownerOf = (prompt) => KEYS.find((k) => prompt.includes(k));

async function start(t, setup, nups) {
  const sims = [];
  for (let i = 0; i < nups; i++) sims.push(await startSim(['--step-ms', '2']));
  const cfg = {
    workers: 1,
    listen: [{ address: '127.0.0.1:0' }],
    upstreams: sims.map((s, i) => ({ url: s.url, dialect: 'vllm', ...(setup.own(i) ? { api_key_env: 'CARPOOL_TEST_UPSTREAM_KEY' } : {}) })),
    // one window for every client of a route: tenants that may share a call do share it
    batching: { policy: 'fixed', max_wait_ms: 150, max_batch_size: 64 },
    log: { level: 'info' },
  };
  if (setup.keys) cfg.auth = { keys: KEYS };
  const cp = await startCarpool(cfg, { env: { CARPOOL_TEST_UPSTREAM_KEY: SECRET } });
  // The requests the upstreams got (on `path`), each with the index of its upstream (sim).
  const logged = async () => (await Promise.all(sims.map((s) => s.stats())))
    .flatMap((st, sim) => st.requests.map((e) => ({ ...e, sim })));
  const calls = async (path) => (await logged()).filter((e) => e.path === path);
  // In keys mode no request on any path (load polls and probes included) carries a client key; each
  // phase checks that before it clears the logs, and the test once more at its end.
  const noClientKeyAnywhere = async () => {
    if (!setup.keys) return;
    for (const e of await logged()) {
      assert.ok(!KEYS.some((k) => e.auth.includes(k)), `client keys never reach an upstream: ${e.method} ${e.path} got "${e.auth}"`);
    }
  };
  const reset = async () => { await noClientKeyAnywhere(); await Promise.all(sims.map((s) => s.reset())); };
  t.after(async () => {
    try { await noClientKeyAnywhere(); } finally { await cp.stop(); for (const s of sims) await s.kill(); }
  });
  return { cp, reset, calls };
}

// Asserts the credential of each upstream call on `path`; a call with prompts belongs to the key
// that sent them (all of them, when keys are forwarded). `owner` names it for calls without prompts.
function checkCalls(setup, path, calls, owner) {
  assert.ok(calls.length > 0, `${path}: no request reached an upstream`);
  for (const e of calls) {
    const owners = new Set((e.prompts || []).map(ownerOf));
    if (setup.keyed) // the credential is the client's: it keys the batch
      assert.ok(owners.size <= 1, `two keys never share a call: ${path} carried prompts of ${[...owners]} with "${e.auth}"`);
    const who = owners.size ? [...owners][0] : owner;
    assert.equal(e.auth, setup.want(who, e.sim), `${setup.promise}: ${e.method} ${path} reached upstream ${e.sim} with ` +
      `Authorization "${e.auth}" (from the client with key ${who})`);
    for (const k of KEYS) {
      if (setup.keys) assert.ok(!e.auth.includes(k), `client keys never reach an upstream: ${path} got "${e.auth}"`);
    }
  }
}

for (const setup of SETUPS) {
  for (const nups of setup.nups || [1, 2]) {
    test(`credentials, ${setup.name}, ${nups} upstream(s): batched completions, embeddings, /v1/models, chat`, async (t) => {
      const { cp, reset, calls } = await start(t, setup, nups);

      // batched completions: both keys at once, streamed and not, one and two prompts
      await reset();
      const comp = KEYS.flatMap((k) => [0, 1, 2].map((i) => ({ k, i,
        prompt: i === 2 ? [`cred ${k} ${i}a`, `cred ${k} ${i}b`] : `cred ${k} ${i}`, stream: i === 1 })));
      const cres = await Promise.all(comp.map((c) => request(cp.port, 'POST', '/v1/completions',
        { model: 'sim-model', prompt: c.prompt, max_tokens: 4, stream: c.stream }, bearer(c.k))));
      cres.forEach((r, x) => {
        assert.equal(r.status, 200, r.body);
        const prompts = [].concat(comp[x].prompt);
        const texts = comp[x].stream ? collect(parseSse(r.body)).text : JSON.parse(r.body).choices.map((ch) => ch.text);
        assert.deepEqual(Object.values(texts), prompts.map((p) => expected(p, { maxTokens: 4 }).text), `client ${x}`);
      });
      const ccalls = await calls('/v1/completions');
      checkCalls(setup, '/v1/completions', ccalls);
      assert.deepEqual(ccalls.flatMap((e) => e.prompts).sort(), comp.flatMap((c) => [].concat(c.prompt)).sort(),
        'every prompt reached the upstream once');
      if (nups === 1 && !setup.keyed)
        assert.equal(ccalls.length, 1, 'clients whose upstream credential is the same share one call');

      // batched embeddings
      await reset();
      const emb = KEYS.flatMap((k) => [0, 1].map((i) => ({ k, input: [`emb ${k} ${i}a`, `emb ${k} ${i}b`] })));
      const eres = await Promise.all(emb.map((e) => request(cp.port, 'POST', '/v1/embeddings',
        { model: 'sim-model', input: e.input }, bearer(e.k))));
      eres.forEach((r, x) => {
        assert.equal(r.status, 200, r.body);
        assertEmbeddings(JSON.parse(r.body).data, emb[x].input, `client ${x}`);
      });
      checkCalls(setup, '/v1/embeddings', await calls('/v1/embeddings'));

      // pass-through routes, one key at a time: GET /v1/models (a union over several upstreams) and chat
      for (const k of KEYS) {
        await reset();
        const models = await request(cp.port, 'GET', '/v1/models', undefined, bearer(k));
        assert.equal(models.status, 200, models.body);
        assert.equal(JSON.parse(models.body).data[0].id, 'sim-model');
        const mcalls = await calls('/v1/models');
        assert.equal(mcalls.length, nups, '/v1/models asks every upstream once');
        checkCalls(setup, '/v1/models', mcalls, k);
        const prompt = `chat ${k}`;
        const chat = await request(cp.port, 'POST', '/v1/chat/completions',
          { model: 'sim-model', messages: [{ role: 'user', content: prompt }], max_tokens: 4 }, bearer(k));
        assert.equal(chat.status, 200, chat.body);
        assert.equal(JSON.parse(chat.body).choices[0].message.content, expected(prompt, { maxTokens: 4 }).text);
        checkCalls(setup, '/v1/chat/completions', await calls('/v1/chat/completions'), k);
      }
      if (setup.keys) {
        const none = await request(cp.port, 'POST', '/v1/completions', { model: 'sim-model', prompt: 'no key' });
        assert.equal(none.status, 401, 'keys mode refuses a client without a key');
      }
    });
  }
}
