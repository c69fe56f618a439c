// `make install` / `make uninstall` with PREFIX and DESTDIR: what lands where, what the unit runs,
// that the operator's config is never overwritten or removed, and that the installed binary works.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { test, tmpdir } = require('./lib');

const ROOT = path.resolve(__dirname, '..', '..');
const make = (args) => execFileSync('make', ['-s', '-C', ROOT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

test('install: make install puts binary, man page, configs, unit and a config in place; uninstall takes back all but the config', () => {
  const dest = tmpdir();
  const args = [`DESTDIR=${dest}`, 'PREFIX=/opt/cp', 'SYSCONFDIR=/etc/cpx'];
  make(['install', ...args]);
  const at = (p) => path.join(dest, p);
  const bin = at('opt/cp/bin/carpool');
  assert.ok(fs.statSync(bin).mode & 0o111, 'the binary is not executable');
  assert.match(execFileSync(bin, ['--version'], { encoding: 'utf8' }), /carpool/);
  assert.match(fs.readFileSync(at('opt/cp/share/man/man1/carpool.1'), 'utf8'), /^\.TH CARPOOL 1/m);
  const configs = fs.readdirSync(path.join(ROOT, 'configs')).filter((f) => f.endsWith('.yaml'));
  assert.ok(configs.length >= 3, `configs: ${configs}`);
  for (const c of configs) assert.ok(fs.existsSync(at(`opt/cp/share/carpool/configs/${c}`)), `${c} not installed`);
  const unit = fs.readFileSync(at('opt/cp/lib/systemd/system/carpool.service'), 'utf8');
  assert.match(unit, /^ExecStart=\/opt\/cp\/bin\/carpool -c \/etc\/cpx\/carpool\/carpool\.yaml$/m);
  assert.ok(!unit.includes('/usr/local/bin'), 'the unit still names /usr/local/bin');
  const conf = at('etc/cpx/carpool/carpool.yaml');
  assert.equal(fs.readFileSync(conf, 'utf8'), fs.readFileSync(path.join(ROOT, 'configs/carpool.yaml'), 'utf8'));
  execFileSync(bin, ['--check-config', '-c', conf], { stdio: 'pipe' }); // throws on a non-zero exit

  // A second install keeps the operator's edited config.
  fs.writeFileSync(conf, '# edited by the operator\n');
  make(['install', ...args]);
  assert.equal(fs.readFileSync(conf, 'utf8'), '# edited by the operator\n');

  make(['uninstall', ...args]);
  for (const p of ['opt/cp/bin/carpool', 'opt/cp/share/man/man1/carpool.1', 'opt/cp/lib/systemd/system/carpool.service', 'opt/cp/share/carpool']) {
    assert.ok(!fs.existsSync(at(p)), `${p} left behind by uninstall`);
  }
  assert.equal(fs.readFileSync(conf, 'utf8'), '# edited by the operator\n', 'uninstall removed the config');
  fs.rmSync(dest, { recursive: true, force: true });
});
