/**
 * Local mode in this process (ECDYSIS_LOCAL=1, the code path of macOS and
 * Windows): the listener API's own suites (ecdysis.test.ts, serve.test.ts) run
 * here once more, on sockets Node created; then what only local mode does:
 * the kinds Node lacks refused with their code, Unix socket files with exact
 * modes, control sockets that only their owner can reach, the warnings, the
 * automatic choice off Linux (process.platform faked in a child), and, at the
 * end, no addon in this process's memory.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Ecdysis } from '../../src/index.ts';
import { cli, rawExchange } from '../helpers/cli.ts';
import { compiledRoot, fixturesDir, repoRoot, waitUntil } from '../helpers/generations.ts';
// Their tests, declared here too: they run in this process, so in local mode.
import './ecdysis.test.ts';
import './serve.test.ts';

// Before any test runs: the mode is decided at the first Ecdysis.create().
process.env.ECDYSIS_LOCAL = '1';

const quiet = { upgradeOn: [], stopOn: [] };
const execFileAsync = promisify(execFile);
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

/** A directory others may enter (0755), so that a socket file's own mode is what decides. */
function openDir(t: import('ava').ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-local-'));
  chmodSync(dir, 0o755);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function warnings(t: import('ava').ExecutionContext): Error[] {
  const seen: Error[] = [];
  const listener = (warning: Error) => seen.push(warning);
  process.on('warning', listener);
  t.teardown(() => void process.off('warning', listener));
  return seen;
}

test('the kinds Node lacks are ERR_ECDYSIS_UNSUPPORTED, naming what local mode has; so are abstract names', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const dir = openDir(t);
  await t.throwsAsync(ecdysis.listenUnixSeqpacket(join(dir, 'seq.sock')), { code: 'ERR_ECDYSIS_UNSUPPORTED', message: /listenUnixSeqpacket\(\) is unavailable in local mode \(ECDYSIS_LOCAL=1 is set\): Node has no Unix seqpacket sockets; local mode has TCP \(listenTcp\), Unix stream \(listenUnix\) and UDP \(listenUdp\)/ });
  await t.throwsAsync(ecdysis.listenUnixDatagram(join(dir, 'dgram.sock')), { code: 'ERR_ECDYSIS_UNSUPPORTED', message: /Node has no Unix datagram sockets/ });
  await t.throwsAsync(ecdysis.listenUnix('\0ecdysis-local-abstract'), { code: 'ERR_ECDYSIS_UNSUPPORTED', message: /abstract Unix socket names/ });
  t.deepEqual(readdirSync(dir), [], 'nothing left behind');
  // A socket systemd would pass: there is none in local mode.
  await t.throwsAsync(ecdysis.listenTcp({ systemd: 'web' }), { code: 'ERR_ECDYSIS_SYSTEMD' });
});

test('upgrade() is ERR_ECDYSIS_UPGRADE_UNSUPPORTED, reported as refused; the generation keeps serving', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  web.connections().subscribe((socket) => socket.end());
  const events: { type: string; error?: { code: string } }[] = [];
  ecdysis.events().subscribe((e) => events.push(e as never));
  await ecdysis.ready();
  const error = await t.throwsAsync(ecdysis.upgrade(), { code: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED', message: /runs in local mode \(ECDYSIS_LOCAL=1 is set\): upgrades need Linux/ });
  t.like(events.at(-1), { type: 'refused', error: { code: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED' } });
  t.is(ecdysis.state, 'ready');
  t.true(web.accepting);
  t.truthy(error);
});

test('a Unix listener: the file has exactly the mode asked, a stale file is replaced, a live one or another file is EADDRINUSE; a stop unlinks it', async (t) => {
  const dir = openDir(t);
  const path = join(dir, 'web.sock');
  // A stale socket file, as a process killed while it listened leaves it.
  await execFileAsync(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]).catch(() => {});
  const staleInode = lstatSync(path).ino;
  t.is(lstatSync(path).ino, staleInode, 'the stale file is there');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const unix = await ecdysis.listenUnix(path, { mode: 0o640 });
  t.not(lstatSync(path).ino, staleInode, 'replaced');
  t.is(lstatSync(path).mode & 0o777, 0o640);
  // (The EADDRINUSE probes below connect to see whether the path is live, and leave at once.)
  unix.connections().subscribe((socket) => socket.on('error', () => {}).end('unix'));
  await ecdysis.ready();
  const answer = await new Promise<string>((resolve, reject) => {
    let text = '';
    connect(path).on('data', (d) => (text += d)).on('end', () => resolve(text)).on('error', reject);
  });
  t.is(answer, 'unix');
  await t.throwsAsync(ecdysis.listenUnix(join(dir, 'web.sock'), { name: 'again' }), { code: 'EADDRINUSE' });
  writeFileSync(join(dir, 'file'), 'not a socket');
  await t.throwsAsync(ecdysis.listenUnix(join(dir, 'file')), { code: 'EADDRINUSE' });
  t.deepEqual(readdirSync(dir).sort(), ['file', 'web.sock'], 'no private directory left behind');
  ecdysis.stop();
  await unix.closed;
  await waitUntil(() => !existsSync(path), 5_000, 'the path unlinked');
  t.false(existsSync(path));
});

test('control socket: 0600 and served (status, stop); another uid cannot connect; a mode others could connect through is refused; allowUids warn', async (t) => {
  const dir = openDir(t);
  const control = join(dir, 'ctl.sock');
  await t.throwsAsync(Ecdysis.create({ upgradeOn: [{ socket: join(dir, 'group.sock'), mode: 0o660 }], stopOn: [] }), {
    code: 'ERR_ECDYSIS_UNSUPPORTED',
    message: /cannot have mode 0660 in local mode .*without SO_PEERCRED \(Linux only\)/,
  });
  const seen = warnings(t);
  const ecdysis = await Ecdysis.create({ upgradeOn: [{ socket: control, allowUids: [65534] }], stopOn: [{ socket: control }] });
  t.is(lstatSync(control).mode & 0o777, 0o600);
  await ecdysis.ready();
  const allowWarning = () => seen.find((w) => (w as { code?: string }).code === 'ECDYSIS_LOCAL_MODE' && w.message.includes('allowUids'));
  await waitUntil(() => allowWarning() !== undefined, 5_000, 'the warning');
  t.regex(allowWarning()!.message, /allowUids and allowGids of the control socket .* admit nobody: without SO_PEERCRED only its owner and root can connect \(mode 0600\)/);
  const [status] = await rawExchange(control, 'status\n');
  t.like(JSON.parse(status!), { ok: true, pid: process.pid, state: 'ready', local: true });
  const [upgrade] = await rawExchange(control, 'upgrade\n');
  t.like(JSON.parse(upgrade!), { ok: false, code: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED' });
  const nobody = await cli(['status', '--socket', control], { prefix: [...NOBODY, 'env', 'ECDYSIS_LOCAL=1'] });
  t.is(nobody.code, 2, `${nobody.stdout}${nobody.stderr}`);
  t.regex(nobody.stderr, /cannot reach the control socket .*: EACCES/);
  const [stopped] = await rawExchange(control, 'stop\n');
  t.like(JSON.parse(stopped!), { ok: true, mode: 'stop' });
  t.like(await ecdysis.exit, { mode: 'stop', reason: 'control socket' });
  await waitUntil(() => !existsSync(control), 5_000, 'the control socket file removed');
});

test('UDP: datagrams that arrive before ready() are held and read after it, replies go back, send() works while nothing reads', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const udp = await ecdysis.listenUdp({ host: '127.0.0.1', port: 0 });
  const client = createSocket('udp4');
  t.teardown(() => client.close());
  await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', resolve));
  const got: string[] = [];
  client.on('message', (data) => got.push(data.toString()));
  await udp.send('not reading yet', client.address().port, '127.0.0.1');
  await waitUntil(() => got.length === 1, 5_000, 'the send before ready');
  for (let i = 0; i < 5; i++) client.send(`early ${i}`, udp.port, '127.0.0.1');
  await ecdysis.ready();
  const read: string[] = [];
  for await (const message of udp) {
    read.push(message.data.toString());
    await message.reply(`re: ${message.data}`);
    if (read.length === 5) break;
  }
  t.deepEqual(read, [0, 1, 2, 3, 4].map((i) => `early ${i}`));
  await waitUntil(() => got.length === 6, 5_000, 'the replies');
  t.deepEqual(got.slice(1), read.map((r) => `re: ${r}`));
});

test('options Node cannot set are ignored with one ECDYSIS_LOCAL_MODE warning each', async (t) => {
  const seen = warnings(t);
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  await ecdysis.listenTcp({ host: '127.0.0.1', port: 0, reusePort: true, deferAccept: 5 });
  await ecdysis.listenTcp({ host: '127.0.0.1', port: 0, reusePort: true });
  await waitUntil(() => seen.filter((w) => (w as { code?: string }).code === 'ECDYSIS_LOCAL_MODE').length >= 2, 5_000, 'the warnings');
  const messages = seen.filter((w) => (w as { code?: string }).code === 'ECDYSIS_LOCAL_MODE').map((w) => w.message);
  t.is(messages.filter((m) => m.includes('option reusePort is ignored')).length, 1);
  t.is(messages.filter((m) => m.includes('option deferAccept is ignored')).length, 1);
});

test.serial('a process started by an upgrade cannot be in local mode: ERR_ECDYSIS_UPGRADE_UNSUPPORTED, and the variable goes', async (t) => {
  process.env.ECDYSIS_HANDOFF = '3:7';
  await t.throwsAsync(Ecdysis.create(quiet), { code: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED', message: /started by an upgrade but runs in local mode/ });
  t.false('ECDYSIS_HANDOFF' in process.env);
});

const probe = `
import { Ecdysis } from ${JSON.stringify(join(compiledRoot, 'src/index.js'))};
import { readFileSync } from 'node:fs';
try {
  const ecdysis = await Ecdysis.create({ upgradeOn: [], stopOn: [] });
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  await ecdysis.ready();
  // Only where it must be refused: on Linux proper it would start a new generation of this script.
  const refusal = process.env.FAKE_PLATFORM || process.env.ECDYSIS_LOCAL === '1' ? await ecdysis.upgrade().then(() => 'upgraded', (err) => err.message) : null;
  console.log(JSON.stringify({ refusal, port: web.port > 0, addon: /ecdysis[^/]*\\.node/.test(readFileSync('/proc/self/maps', 'utf8')) }));
  ecdysis.stop();
} catch (err) {
  console.log(JSON.stringify({ code: err.code, message: err.message }));
}
`;

async function runProbe(env: Record<string, string>): Promise<Record<string, unknown>> {
  const { ECDYSIS_LOCAL: _set, ...inherited } = process.env;
  // Compiled, without tsx: its esbuild refuses to run on a platform it was not installed for.
  const { stdout } = await execFileAsync(process.execPath, ['--require', join(fixturesDir, 'fake-platform.cjs'), '--input-type=module', '-e', probe], {
    cwd: repoRoot,
    env: { ...inherited, ...env },
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Record<string, unknown>;
}

test('off Linux (process.platform faked) local mode is automatic, and ECDYSIS_LOCAL=0 cannot turn it off', async (t) => {
  const environments: Record<string, string>[] = [{ FAKE_PLATFORM: 'darwin' }, { FAKE_PLATFORM: 'win32', ECDYSIS_LOCAL: '0' }];
  for (const env of environments) {
    const result = await runProbe(env);
    t.like(result, { port: true, addon: false }, JSON.stringify(result));
    t.regex(result.refusal as string, new RegExp(`local mode \\(this is ${env.FAKE_PLATFORM}, not Linux\\)`));
  }
});

test('ECDYSIS_LOCAL other than 1, 0 or unset is ERR_ECDYSIS_INVALID_OPTION; 0 on Linux is the addon', async (t) => {
  const invalid = await runProbe({ ECDYSIS_LOCAL: 'yes' });
  t.is(invalid.code, 'ERR_ECDYSIS_INVALID_OPTION');
  t.regex(invalid.message as string, /ECDYSIS_LOCAL must be 1 \(local mode\), 0 or unset, got "yes"/);
  t.like(await runProbe({ ECDYSIS_LOCAL: '0' }), { addon: true, port: true, refusal: null });
});

test.after('this process never loaded the addon', (t) => {
  t.false(/\/ecdysis(\.[\w-]+)*\.node/.test(readFileSync('/proc/self/maps', 'utf8')));
});
