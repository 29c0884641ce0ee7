/**
 * Whom the `ecdysis` command believes, run as root as a deploy script would be:
 * a control socket at an abstract name, squatters of another uid (65534, through
 * setpriv) at a padded or exact abstract name or at a path, and PID files that
 * name the wrong process (0, 1, beyond pid_max, through a symlink, a file
 * another user owns, a process that is not the service).
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onLines } from '../../examples/lib/lines.ts';
import { cli, cliPath } from '../helpers/cli.ts';
import { runCommand } from '../helpers/run.ts';
import { fixtureCommand, isAlive, startGenerations, waitUntil } from '../helpers/generations.ts';

const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-trust-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const abstractName = () => `ecdysis-trust-${randomBytes(8).toString('hex')}`;

/** A control-socket impostor as uid 65534 (fixtures/control-squatter.ts), answering as pid 4242. */
async function squatter(t: ExecutionContext, kind: 'exact' | 'padded' | 'path', address: string): Promise<void> {
  const child = spawn(NOBODY[0]!, [...NOBODY.slice(1), process.execPath, ...fixtureCommand('control-squatter.ts'), kind, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    onLines(child.stdout!, (line) => line === 'ready' && resolve());
    child.once('exit', (code) => reject(new Error(`the squatter exited (${code})`)));
  });
}

test('ecdysis reaches a control socket at an abstract name, as the library binds it (its exact length): status and upgrade, exit 0', async (t) => {
  const name = abstractName();
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: `@${name}` });
  const first = await g.ready(0);
  const status = await cli(['status', '--socket', `@${name}`, '--json']);
  t.is(status.code, 0, status.stderr);
  t.like(JSON.parse(status.stdout), { ok: true, pid: first.pid, generation: 0 });
  const upgraded = await cli(['upgrade', '--socket', `@${name}`]);
  t.is(upgraded.code, 0, upgraded.stderr);
  t.is(upgraded.stdout.replace(/ in \d+ ms\n$/, ''), `upgraded: pid ${(await g.ready(1)).pid} (generation 1)`);
});

test('a squatter of another uid at the NUL-padded abstract name, beside the running service, is never reached: the upgrade is the real one', async (t) => {
  const name = abstractName();
  await squatter(t, 'padded', name);
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: `@${name}` });
  await g.ready(0);
  const upgraded = await cli(['upgrade', '--socket', `@${name}`]);
  t.is(upgraded.code, 0, upgraded.stderr);
  t.is(upgraded.stdout.replace(/ in \d+ ms\n$/, ''), `upgraded: pid ${(await g.ready(1)).pid} (generation 1)`);
});

test('a squatter of another uid at the exact abstract name (no service there) is not believed: exit 2 naming its uid, nothing printed as done; --server-uid believes it', async (t) => {
  const name = abstractName();
  await squatter(t, 'exact', name);
  for (const command of [['upgrade'], ['status'], ['stop', '--wait']]) {
    const result = await cli([...command, '--socket', `@${name}`]);
    t.is(result.code, 2, `${command.join(' ')}: ${result.stderr}`);
    t.is(result.stdout, '');
    t.regex(result.stderr, new RegExp(`^not talking to @${name}: the process serving @${name} \\(pid \\d+\\) runs as uid 65534: not root, not this user \\(uid 0\\); an abstract name can be bound by any user`));
  }
  const believed = await cli(['status', '--socket', `@${name}`, '--server-uid', '65534']);
  t.is(believed.code, 0, believed.stderr);
  t.regex(believed.stdout, /^pid 4242, generation 7, ready/);
});

test('a socket file of another uid is believed only where nobody else could have put it: refused in a world-writable (sticky) directory, believed in its owner\'s own directory', async (t) => {
  const dir = tempDir(t);
  chmodSync(dir, 0o755);
  const shared = join(dir, 'shared');
  mkdirSync(shared);
  chmodSync(shared, 0o1777);
  await squatter(t, 'path', join(shared, 'control.sock'));
  const refused = await cli(['upgrade', '--socket', join(shared, 'control.sock')]);
  t.is(refused.code, 2, refused.stderr);
  t.is(refused.stdout, '');
  t.regex(refused.stderr, /runs as uid 65534, the owner of .*control\.sock, but another user could have put it there: .*shared is writable by group or others \(mode 1777\)/);

  const own = join(dir, 'own');
  mkdirSync(own);
  chownSync(own, 65534, 65534);
  await squatter(t, 'path', join(own, 'control.sock'));
  const believed = await cli(['status', '--socket', join(own, 'control.sock')]);
  t.is(believed.code, 0, believed.stderr);
  t.regex(believed.stdout, /^pid 4242, generation 7, ready/);
});

/** A root `sleep`, the process a forged PID file names; killed at teardown. */
function sleeper(t: ExecutionContext): number {
  const sleep = spawn('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => sleep.kill('SIGKILL'));
  return sleep.pid!;
}

test('--pid-file naming a process that is not the service is refused with exit 2, nothing signalled: a symlink to a uid-65534 file, that file itself, a stale root file naming a root sleep', async (t) => {
  const dir = tempDir(t);
  chmodSync(dir, 0o755);
  const sleep = sleeper(t);
  const forged = join(dir, 'forged.pid');
  writeFileSync(forged, `${sleep}\n`);
  chownSync(forged, 65534, 65534);
  symlinkSync(forged, join(dir, 'app.pid'));
  const stale = join(dir, 'stale.pid');
  writeFileSync(stale, `${sleep}\n`);
  const cases: [string[], RegExp][] = [
    [['upgrade', '--pid-file', join(dir, 'app.pid')], /app\.pid is a symbolic link: a PID file is never read through one/],
    [['stop', '--pid-file', join(dir, 'app.pid'), '--signal', 'SIGKILL'], /app\.pid is a symbolic link/],
    [['upgrade', '--pid-file', forged], /not signalling: .*forged\.pid is owned by uid 65534: as root, a PID file another user could have written is followed only to a process of this command's own service/],
    [['stop', '--pid-file', stale, '--signal', 'SIGKILL'], new RegExp(`not signalling: pid ${sleep} \\(named by .*stale\\.pid, .*sleep\\) has not loaded ecdysis: not the service`)],
  ];
  for (const [args, message] of cases) {
    const result = await cli([...args, '--timeout', '2000']);
    t.is(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
    t.regex(result.stderr, message);
    t.true(isAlive(sleep), `${args.join(' ')}: the sleep was not signalled`);
  }
});

test('--pid-file "0" (this command\'s own process group) and a pid above pid_max are refused with exit 2; the process group is untouched', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'zero.pid'), '0\n');
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  writeFileSync(join(dir, 'big.pid'), `${pidMax + 1}\n`);
  for (const [file, message] of [['zero.pid', /names pid 0, which is never signalled/], ['big.pid', new RegExp(`names pid ${pidMax + 1}, above pid_max \\(${pidMax}\\)`)]] as const) {
    // In a session of its own, beside a sleep of the same process group: kill(0) would end both.
    const script = `sleep 600 </dev/null >/dev/null 2>&1 & echo $! > ${dir}/sibling; exec "$@"`;
    const result = await runCommand('setsid', ['--wait', 'sh', '-c', script, 'sh', process.execPath, cliPath, 'stop', '--pid-file', join(dir, file)], { timeoutMs: 30_000 });
    const sibling = Number(readFileSync(join(dir, 'sibling'), 'utf8'));
    t.teardown(() => isAlive(sibling) && process.kill(sibling, 'SIGKILL'));
    t.is(result.code, 2, `${file}: ${result.stderr}`);
    t.regex(result.stderr, message);
    t.true(isAlive(sibling), `${file}: the process group was not signalled`);
  }
});

test('--pid-file "1" is refused with exit 2: init (here the PID 1 of a private pid namespace, which records signals) hears nothing', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'one.pid'), '1\n');
  const signals = join(dir, 'init-signals');
  // PID 1 of the namespace is this shell: it has handlers, so signals reach it.
  const script = `trap 'echo HUP >> ${signals}' HUP; trap 'echo TERM >> ${signals}' TERM; "$@"; exit $?`;
  const result = await runCommand('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', script, 'sh', process.execPath, cliPath, 'upgrade', '--pid-file', join(dir, 'one.pid'), '--timeout', '2000'], { timeoutMs: 30_000 });
  t.is(result.code, 2, result.stderr);
  t.regex(result.stderr, /names pid 1, which is never signalled/);
  t.false(existsSync(signals), 'PID 1 received no signal');
});

test('--pid-file of a real service: upgrade signals it and names the new pid; stop --wait returns once it is gone (root file, root directory)', async (t) => {
  const dir = tempDir(t);
  const pidFile = join(dir, 'app.pid');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_PID_FILE: pidFile });
  const first = await g.ready(0);
  await waitUntil(() => existsSync(pidFile), 10_000, 'the PID file');
  const upgraded = await cli(['upgrade', '--pid-file', pidFile, '--timeout', '60000']);
  t.is(upgraded.code, 0, upgraded.stderr);
  const second = await g.ready(1);
  t.is(upgraded.stdout, `upgraded: pid ${second.pid} (from the PID file)\n`);
  // Generation 1 sees its parent's end a moment before the process is reaped.
  await waitUntil(() => !isAlive(first.pid), 30_000, 'generation 0 gone');
  const stopped = await cli(['stop', '--pid-file', pidFile, '--wait', '--timeout', '60000']);
  t.is(stopped.code, 0, stopped.stderr);
  t.is(stopped.stdout, `stopped: pid ${second.pid} has exited\n`);
  t.false(isAlive(second.pid));
});
