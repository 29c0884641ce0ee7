/**
 * ecdysis under a real systemd 252 user manager (test/helpers/systemd.ts):
 * reloads that wait for the new generation and report failures, MainPID that
 * follows, a graceful stop after any number of reloads, the watchdog, socket
 * activation by name, and sockets that outlive the process.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HttpLoad, totalFailures } from '../../examples/lib/http-load.ts';
import { cliPath } from '../helpers/cli.ts';
import { fixtureCommand, repoRoot, waitUntil } from '../helpers/generations.ts';
import { environmentLines, execLine, fixtureExecLine, startUserManager, systemdTest, type UserManager } from '../helpers/systemd.ts';
import { freePort } from '../../examples/lib/free-port.ts';

interface Record_ {
  type: string;
  event?: string;
  pid: number;
  gen: number;
  [key: string]: unknown;
}

const examples = join(repoRoot, 'examples/systemd');

/**
 * examples/systemd/app.service as shipped, its paths swapped for the test's:
 * the HTTP fixture for the server, this checkout's CLI, a temporary control
 * socket; then the fixture's environment and `extra` lines at the end of
 * [Service] (a later line of the same setting wins).
 */
function serviceUnit(manager: UserManager, env: Record<string, string>, extra = ''): { text: string; control: string; records: string } {
  const control = join(manager.base, 'control.sock');
  const records = join(manager.base, 'records.jsonl');
  const text = readFileSync(join(examples, 'app.service'), 'utf8')
    .replaceAll('/usr/bin/node /srv/app/current/server.mjs', fixtureExecLine('http-service.ts'))
    .replaceAll('/srv/app/current/node_modules/.bin/ecdysis', execLine([process.execPath, cliPath]))
    .replaceAll('/run/app/control.sock', control)
    .replace('[Install]', `${environmentLines({ FIXTURE_CONTROL: control, FIXTURE_RECORDS: records, ...env })}\n${extra}\n\n[Install]`);
  return { text, control, records };
}

/**
 * examples/systemd/app-web.socket and app-admin.socket as shipped, on a free
 * port of 127.0.0.1 and ::1 and a temporary path; the service lists both.
 */
async function writeSocketUnits(manager: UserManager, port: number, adminPath: string): Promise<string> {
  const web = readFileSync(join(examples, 'app-web.socket'), 'utf8').replace('ListenStream=0.0.0.0:8080', `ListenStream=127.0.0.1:${port}`).replace('ListenStream=[::]:8080', `ListenStream=[::1]:${port}`);
  await manager.writeUnit('app-web.socket', web);
  await manager.writeUnit('app-admin.socket', readFileSync(join(examples, 'app-admin.socket'), 'utf8').replace('ListenStream=/run/app/admin.sock', `ListenStream=${adminPath}`));
  return 'Sockets=app-web.socket app-admin.socket';
}

function readRecords(path: string): Record_[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record_);
}

async function fetchStatus(url: string): Promise<{ status: number; body: string }> {
  const response = await fetch(url);
  return { status: response.status, body: await response.text() };
}

systemdTest('10 `systemctl reload` under HTTP load: each returns once the new generation is ready, MainPID follows, 0 failed requests', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text, records } = serviceUnit(manager, { FIXTURE_PORT: String(port) });
  await manager.writeUnit('app.service', text);
  t.is((await manager.systemctl('start', 'app.service')).code, 0);
  const load = new HttpLoad({ port, keepAliveClients: 3, freshClients: 2, durationMs: 180_000, samples: false }).start();
  t.teardown(() => load.stop()); // a failed assertion must not leave it running for its whole duration
  for (let gen = 1; gen <= 10; gen++) {
    const reload = await manager.systemctl('reload', 'app.service');
    t.is(reload.code, 0, reload.stderr);
    // Returned only once the new generation was ready: the old one had recorded its child-ready.
    const successor = committedSuccessor(records, gen);
    t.truthy(successor, `generation ${gen} was ready when reload returned`);
    const props = await manager.show('app.service', ['MainPID', 'ActiveState', 'SubState']);
    t.deepEqual(props, { MainPID: String(successor), ActiveState: 'active', SubState: 'running' });
  }
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.true(report.ok > 100);
});

systemdTest('a reload whose new generation crashes: `systemctl reload` fails, the unit stays active with the same MainPID and serves; the next reload succeeds', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text, records } = serviceUnit(manager, { FIXTURE_PORT: String(port), FIXTURE_FAIL: '1.1:exit', FIXTURE_STATE_DIR: manager.base });
  await manager.writeUnit('app.service', text);
  await manager.systemctl('start', 'app.service');
  const before = await manager.show('app.service', ['MainPID']);
  const failed = await manager.systemctl('reload', 'app.service');
  t.not(failed.code, 0);
  t.like(await manager.show('app.service', ['MainPID', 'ActiveState', 'SubState']), { MainPID: before.MainPID, ActiveState: 'active', SubState: 'running' });
  t.is((await fetchStatus(`http://127.0.0.1:${port}/`)).status, 200);
  t.true(readRecords(records).some((r) => r.event === 'child-failed' && r.code === 'ERR_ECDYSIS_CHILD_EXITED'));
  t.is((await manager.systemctl('reload', 'app.service')).code, 0);
  t.like(await manager.show('app.service', ['MainPID', 'ActiveState']), { MainPID: String(committedSuccessor(records, 1)), ActiveState: 'active' });
});

systemdTest('`systemctl stop` after 5 reloads: a request in flight completes with 200, Result=success, nothing of the unit left', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text } = serviceUnit(manager, { FIXTURE_PORT: String(port) });
  await manager.writeUnit('app.service', text);
  await manager.systemctl('start', 'app.service');
  for (let i = 0; i < 5; i++) t.is((await manager.systemctl('reload', 'app.service')).code, 0);
  const { ControlGroup } = await manager.show('app.service', ['ControlGroup']);
  const inFlight = fetchStatus(`http://127.0.0.1:${port}/slow?ms=1500`);
  await new Promise((r) => setTimeout(r, 300));
  const stop = await manager.systemctl('stop', 'app.service');
  t.is(stop.code, 0, stop.stderr);
  t.deepEqual(await inFlight, { status: 200, body: 'slow done\n' });
  t.like(await manager.show('app.service', ['Result', 'ActiveState']), { Result: 'success', ActiveState: 'inactive' });
  t.deepEqual(manager.cgroupPids(ControlGroup), []);
});

systemdTest('watchdog: a generation whose event loop blocks is restarted by systemd; a healthy one across 3 reloads is not', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text } = serviceUnit(manager, { FIXTURE_PORT: String(port) }, 'WatchdogSec=2\nRestart=on-failure\nRestartSec=100ms');
  await manager.writeUnit('app.service', text);
  await manager.systemctl('start', 'app.service');
  for (let i = 0; i < 3; i++) t.is((await manager.systemctl('reload', 'app.service')).code, 0);
  // Longer than WatchdogSec, idle: the pings come from whichever generation is main.
  await new Promise((r) => setTimeout(r, 3_000));
  t.like(await manager.show('app.service', ['NRestarts', 'ActiveState']), { NRestarts: '0', ActiveState: 'active' });
  void fetch(`http://127.0.0.1:${port}/block?ms=5000`).catch(() => {});
  let restarts = '0';
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && restarts === '0') {
    await new Promise((r) => setTimeout(r, 200));
    restarts = (await manager.show('app.service', ['NRestarts'])).NRestarts;
  }
  t.is(restarts, '1', 'restarted once, by the watchdog');
  t.true((await manager.journal('app.service')).some((line) => /[Ww]atchdog timeout/.test(line)));
});

systemdTest('socket activation: sockets adopted by name (two TCP named "web", told apart by address, and a Unix one), 3 reloads under load with 0 failed requests, LISTEN_* in no generation', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const adminPath = join(manager.base, 'admin.sock');
  const sockets = await writeSocketUnits(manager, port, adminPath);
  const { text, records } = serviceUnit(manager, { FIXTURE_SYSTEMD_TCP: 'web', FIXTURE_SYSTEMD_TCP6: '1', FIXTURE_SYSTEMD_UNIX: 'admin' }, sockets);
  await manager.writeUnit('app.service', text);
  t.is((await manager.systemctl('start', 'app-web.socket', 'app-admin.socket')).code, 0);
  // The first connection starts the service.
  t.is((await fetchStatus(`http://127.0.0.1:${port}/`)).status, 200);
  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  t.teardown(() => load.stop()); // a failed assertion must not leave it running for its whole duration
  for (let i = 0; i < 3; i++) t.is((await manager.systemctl('reload', 'app.service')).code, 0);
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  // Each generation writes its ready record once its ready() resolves, just after the commit the reload waited for.
  await waitUntil(() => readRecords(records).filter((r) => r.type === 'ready').length === 4, 30_000, 'the ready records of generations 0 to 3');
  const ready = readRecords(records).filter((r) => r.type === 'ready');
  t.deepEqual(ready.map((r) => r.gen), [0, 1, 2, 3]);
  t.true(ready.every((r) => (r.listenEnv as string[]).length === 0), 'LISTEN_* removed in every generation');
  t.true(ready.every((r) => r.admin === adminPath), 'the Unix socket adopted by name in every generation');
  t.true(ready.every((r) => r.web === '127.0.0.1' && r.web6 === '::1'), 'both sockets named "web" adopted, each by its address, in every generation');
  t.is((await fetchStatus(`http://[::1]:${port}/`)).body, 'hello 3\n');
  const viaUnix = await new Promise<string>((resolve, reject) => {
    import('node:http').then(({ get }) => get({ socketPath: adminPath, path: '/' }, (res) => { let body = ''; res.on('data', (c) => (body += c)); res.on('end', () => resolve(body)); }).on('error', reject));
  });
  t.is(viaUnix, 'hello 3\n');
});

systemdTest('sockets that outlive the process: `systemctl restart` of a socket-activated unit, and kill -9 with the fd store: 0 refused under load', async (t) => {
  const manager = await startUserManager(t);
  // Socket activation: systemd holds the socket while the service restarts.
  const port = await freePort();
  const sockets = await writeSocketUnits(manager, port, join(manager.base, 'admin.sock'));
  const activated = serviceUnit(manager, { FIXTURE_SYSTEMD_TCP: 'web', FIXTURE_SYSTEMD_UNIX: 'admin' }, sockets);
  await manager.writeUnit('app.service', activated.text);
  await manager.systemctl('start', 'app-web.socket', 'app-admin.socket');
  t.is((await fetchStatus(`http://127.0.0.1:${port}/`)).status, 200);
  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 3, durationMs: 120_000, samples: false, timeoutMs: 30_000 }).start();
  t.teardown(() => load.stop()); // a failed assertion must not leave it running for its whole duration
  await new Promise((r) => setTimeout(r, 500));
  t.is((await manager.systemctl('restart', 'app.service')).code, 0);
  await new Promise((r) => setTimeout(r, 500));
  const report = await load.stop();
  t.log(`restart: ${report.ok} ok, ${JSON.stringify(report.failures)}`);
  t.is(report.failures.refused, 0, report.errors.join('\n'));

  // The fd store: the service keeps its own socket in systemd; a crash costs no connection.
  const storedPort = await freePort();
  const dropIn = readFileSync(join(examples, 'app-fd-store.service.d.conf'), 'utf8').replace('[Service]', '');
  const stored = serviceUnit(manager, { FIXTURE_PORT: String(storedPort), FIXTURE_FD_STORE: '1', FIXTURE_RECORDS: join(manager.base, 'stored.jsonl') }, `${dropIn}\nRestartSec=200ms`);
  await manager.writeUnit('stored.service', stored.text.replace(/control\.sock/g, 'stored-control.sock'));
  await manager.systemctl('start', 'stored.service');
  const storedLoad = new HttpLoad({ port: storedPort, keepAliveClients: 2, freshClients: 3, durationMs: 120_000, samples: false, timeoutMs: 30_000 }).start();
  t.teardown(() => storedLoad.stop()); // a failed assertion must not leave it running for its whole duration
  await new Promise((r) => setTimeout(r, 500));
  const { MainPID } = await manager.show('stored.service', ['MainPID']);
  process.kill(Number(MainPID), 'SIGKILL');
  await waitUntil(() => readRecords(join(manager.base, 'stored.jsonl')).filter((r) => r.type === 'ready').length === 2, 30_000, 'the restarted service ready');
  await new Promise((r) => setTimeout(r, 500));
  const storedReport = await storedLoad.stop();
  t.log(`kill -9 with the fd store: ${storedReport.ok} ok, ${JSON.stringify(storedReport.failures)}`);
  t.is(storedReport.failures.refused, 0, storedReport.errors.join('\n'));
  t.like(await manager.show('stored.service', ['NRestarts', 'ActiveState']), { NRestarts: '1', ActiveState: 'active' });
});

systemdTest('maxDrainingGenerations 3: 4 reloads while every older generation still drains a request; each returns 0, MainPID names the serving generation, generation 0 is told to finish by the 4th, the others drain until their clients leave', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text, records, control } = serviceUnit(manager, { FIXTURE_PORT: String(port), FIXTURE_MAX_DRAINING: '3', FIXTURE_DRAIN_TIMEOUT: '120000' });
  await manager.writeUnit('app.service', text);
  t.is((await manager.systemctl('start', 'app.service')).code, 0);
  const held: Promise<number | string>[] = [];
  const leave = new AbortController();
  for (let gen = 1; gen <= 4; gen++) {
    // A request that holds the serving generation in its drain until its client leaves (at most 60 s).
    held.push(fetch(`http://127.0.0.1:${port}/slow?ms=60000`, { signal: leave.signal }).then((r) => r.status, (err: Error) => err.name));
    await waitUntil(() => connectionsOf(control) > 0, 30_000, `generation ${gen - 1} holds a request`);
    const reload = await manager.systemctl('reload', 'app.service');
    t.is(reload.code, 0, reload.stderr);
    t.like(await manager.show('app.service', ['MainPID', 'ActiveState']), { MainPID: String(committedSuccessor(records, gen)), ActiveState: 'active' });
  }
  const events = readRecords(records).filter((r) => r.type === 'event' && (r.event === 'retire-requested' || r.event === 'ancestor-retired'));
  t.deepEqual(events.map((r) => [r.gen, r.event]).sort(), [[0, 'retire-requested'], [3, 'ancestor-retired']]);
  // Generation 0's request was cut when it was told to finish; the clients of 1 to 3 leave, ending their drains.
  t.is(await held[0], 'TypeError');
  leave.abort();
  t.deepEqual(await Promise.all(held), ['TypeError', 'AbortError', 'AbortError', 'AbortError']);
  const stop = await manager.systemctl('stop', 'app.service');
  t.is(stop.code, 0, stop.stderr);
  t.deepEqual(readRecords(records).filter((r) => r.type === 'event' && r.event === 'drained').map((r) => r.gen).sort(), [0, 1, 2, 3, 4]);
  t.like(await manager.show('app.service', ['Result', 'ActiveState']), { Result: 'success', ActiveState: 'inactive' });
});

/**
 * The pid of generation `gen`, as generation gen - 1 recorded it in its
 * child-ready event: emitted at the commit, before upgrade() resolves and so
 * before the control socket answers `ecdysis upgrade` (ExecReload=). The new
 * generation's own ready record comes a moment later (its ready() resolves when
 * it reads the commit), so a test must not expect it when the reload returns.
 */
function committedSuccessor(records: string, gen: number): number | undefined {
  return readRecords(records).find((r) => r.type === 'event' && r.event === 'child-ready' && r.gen === gen - 1)?.childPid as number | undefined;
}

/** The open connections the serving generation reports (ecdysis status, through the control socket). */
function connectionsOf(control: string): number {
  const status = spawnSync(process.execPath, [cliPath, 'status', '--socket', control, '--json'], { encoding: 'utf8' });
  if (status.status !== 0) return 0;
  const reply = JSON.parse(status.stdout) as { listeners: { connections: number }[]; workers?: { connections: number }[] };
  // A primary's connections are its workers'.
  return (reply.workers ?? reply.listeners).reduce((n, l) => n + l.connections, 0);
}

systemdTest('workers: 2 under systemd: 5 `systemctl reload` under load with MainPID the new primary each time and 0 failed; `systemctl stop` with a request in flight: 200, Result=success, nothing left', async (t) => {
  const manager = await startUserManager(t);
  const port = await freePort();
  const { text, records } = serviceUnit(manager, { FIXTURE_PORT: String(port), FIXTURE_WORKERS: '2' });
  await manager.writeUnit('app.service', text);
  t.is((await manager.systemctl('start', 'app.service')).code, 0);
  const load = new HttpLoad({ port, keepAliveClients: 3, freshClients: 2, durationMs: 180_000, samples: false }).start();
  t.teardown(() => load.stop());
  for (let gen = 1; gen <= 5; gen++) {
    const reload = await manager.systemctl('reload', 'app.service');
    t.is(reload.code, 0, reload.stderr);
    const successor = committedSuccessor(records, gen);
    t.truthy(successor, `generation ${gen}'s primary was ready when reload returned`);
    t.like(await manager.show('app.service', ['MainPID', 'ActiveState']), { MainPID: String(successor), ActiveState: 'active' });
    // Its workers are its children, in the unit's cgroup.
    const workers = readRecords(records).filter((r) => r.type === 'event' && r.event === 'worker-ready' && r.pid === successor).map((r) => r.workerPid as number);
    t.is(workers.length, 2);
  }
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.true(Object.keys(report.workers ?? {}).length >= 10, `answers from ${JSON.stringify(report.workers)}`);
  const { ControlGroup } = await manager.show('app.service', ['ControlGroup']);
  const inFlight = fetchStatus(`http://127.0.0.1:${port}/slow?ms=1500`);
  await waitUntil(() => connectionsOf(join(manager.base, 'control.sock')) >= 1, 30_000, 'the slow request reached a worker');
  const stop = await manager.systemctl('stop', 'app.service');
  t.is(stop.code, 0, stop.stderr);
  t.deepEqual(await inFlight, { status: 200, body: 'slow done\n' });
  t.like(await manager.show('app.service', ['Result', 'ActiveState']), { Result: 'success', ActiveState: 'inactive' });
  t.deepEqual(manager.cgroupPids(ControlGroup), []);
});

for (const killMode of ['control-group', 'mixed'] as const) {
  systemdTest(`\`ecdysis run --notify\` as ExecStart= with no ExecStop=, KillMode=${killMode}: 3 reloads by SIGHUP, MainPID stays ecdysis run; \`systemctl stop\` (SIGTERM to ${killMode === 'mixed' ? 'ecdysis run alone' : 'every process of the unit, the default'}): the service drains once (a request in flight: 200), Result=success, nothing left`, async (t) => {
    const manager = await startUserManager(t);
    const port = await freePort();
    const records = join(manager.base, 'records.jsonl');
    const control = join(manager.base, 'control.sock');
    const unit = [
      '[Unit]',
      'Description=app under ecdysis run',
      '[Service]',
      'Type=notify',
      `ExecStart=${execLine([process.execPath, cliPath, 'run', '--notify', '--', process.execPath, ...fixtureCommand('http-service.ts')])}`,
      'ExecReload=/bin/kill -HUP $MAINPID',
      'TimeoutStopSec=60',
      `KillMode=${killMode}`,
      environmentLines({ FIXTURE_PORT: String(port), FIXTURE_RECORDS: records, FIXTURE_CONTROL: control }),
      '',
    ].join('\n');
    await manager.writeUnit('app.service', unit);
    t.is((await manager.systemctl('start', 'app.service')).code, 0);
    const { MainPID: run } = await manager.show('app.service', ['MainPID']);
    for (let gen = 1; gen <= 3; gen++) {
      t.is((await manager.systemctl('reload', 'app.service')).code, 0);
      await waitUntil(() => readRecords(records).some((r) => r.type === 'ready' && r.gen === gen), 30_000, `generation ${gen} ready`);
      // READY=1 reaches systemd through ecdysis run after the generation's own record: wait for the reload to end.
      let shown = await manager.show('app.service', ['MainPID', 'ActiveState']);
      for (let tries = 0; shown.ActiveState === 'reloading' && tries < 300; tries++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        shown = await manager.show('app.service', ['MainPID', 'ActiveState']);
      }
      t.like(shown, { MainPID: run, ActiveState: 'active' });
    }
    const { ControlGroup } = await manager.show('app.service', ['ControlGroup']);
    const inFlight = fetchStatus(`http://127.0.0.1:${port}/slow?ms=1500`);
    await waitUntil(() => connectionsOf(control) >= 1, 30_000, 'the slow request reached the service');
    const stop = await manager.systemctl('stop', 'app.service');
    t.is(stop.code, 0, stop.stderr);
    t.deepEqual(await inFlight, { status: 200, body: 'slow done\n' });
    t.like(await manager.show('app.service', ['Result', 'ActiveState']), { Result: 'success', ActiveState: 'inactive' });
    t.deepEqual(manager.cgroupPids(ControlGroup), []);
  });
}
