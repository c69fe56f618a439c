// JavaScript twin of bench/simgen.c: the simulator's deterministic output (see bench/simgen.h).
'use strict';

function fnv1a(key) {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  let h = 2166136261;
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 16777619) >>> 0;
  }
  return h >>> 0;
}

function promptKey(prompt) {
  return Array.isArray(prompt) ? prompt.join(',') : prompt;
}

function seed(prompt, choice = 0) {
  return (fnv1a(promptKey(prompt)) ^ Math.imul(choice, 0x9E3779B9)) >>> 0;
}

// The text and finish_reason the simulator generates for one choice of one prompt; answers is the
// sim's --answer-tokens range [min, max] (default [3, 16]).
function expected(prompt, { choice = 0, maxTokens, answers = [3, 16] } = {}) {
  const s = seed(prompt, choice);
  const natural = answers[0] + (s % (answers[1] - answers[0] + 1));
  const cap = maxTokens === undefined || maxTokens === null ? 16 : maxTokens === 0 ? 1 : maxTokens;
  const m = Math.min(natural, cap);
  const tokens = [];
  for (let i = 0; i < m; i++) {
    const v = (Math.imul((Math.imul(s, 31) + i) >>> 0, 2654435761) >>> 0) >>> 16;
    tokens.push(` t${i}-${v.toString(16).padStart(4, '0')}`);
  }
  return { tokens, text: tokens.join(''), finish_reason: cap < natural ? 'length' : 'stop' };
}

function embedding(input, dims = 8) {
  const h = fnv1a(promptKey(input));
  const out = [];
  for (let k = 0; k < dims; k++) out.push(((h + k * 7919) >>> 0) % 2000 / 1000 - 1);
  return out;
}

module.exports = { fnv1a, seed, expected, embedding };
