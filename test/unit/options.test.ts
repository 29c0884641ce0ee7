import test from 'ava';
import { resolveOptions } from '../../src/lifecycle/options.ts';

test('defaults', (t) => {
  const options = resolveOptions(undefined);
  t.is(options.upgradeTimeout, 60_000);
  t.deepEqual([...options.signals], [
    ['SIGHUP', 'upgrade'],
    ['SIGTERM', 'stop'],
    ['SIGINT', 'stop'],
  ]);
  t.is(options.pidFile, undefined);
  t.is(options.probation, 5_000);
  t.is(options.pidFileMode, 0o644);
  t.is(options.maxDrainingGenerations, 1);
  t.is(options.niceWhileStarting, 0);
});

test('an option given as undefined takes its default; a relative PID file is made absolute', (t) => {
  const options = resolveOptions({ probation: undefined, upgradeTimeout: undefined, pidFile: 'run/app.pid' });
  t.is(options.probation, 5_000);
  t.is(options.upgradeTimeout, 60_000);
  t.is(options.pidFile, `${process.cwd()}/run/app.pid`);
});

const invalid: [unknown, string, RegExp][] = [
  ['nope', 'options', /must be an object/],
  [{ upgradeTimout: 5 }, 'options.upgradeTimout', /is not an option/],
  [{ upgradeTimeout: 0 }, 'options.upgradeTimeout', /positive integer/],
  [{ upgradeTimeout: 1.5 }, 'options.upgradeTimeout', /positive integer/],
  [{ upgradeTimeout: '60s' }, 'options.upgradeTimeout', /positive integer.*"60s"/],
  [{ upgradeOn: 'SIGHUP' }, 'options.upgradeOn', /array of signal names/],
  [{ upgradeOn: ['SIGNOPE'] }, 'options.upgradeOn[0]', /signal name/],
  [{ stopOn: ['SIGKILL'] }, 'options.stopOn[0]', /can be caught/],
  [{ stopOn: ['SIGHUP'] }, 'options.stopOn[0]', /already a trigger for upgrade/],
  [{ upgradeOn: [{ socket: '' }] }, 'options.upgradeOn[0].socket', /filesystem path or an abstract name/],
  [{ upgradeOn: [{ socket: '/run/x.sock', mode: 0o4600 }] }, 'options.upgradeOn[0].mode', /integer from 0 to 511/],
  [{ upgradeOn: [{ socket: '/run/x.sock', owner: 'me' }] }, 'options.upgradeOn[0].owner', /not a control socket field/],
  [{ upgradeOn: [{ socket: '/run/x.sock', allowUids: [-1] }] }, 'options.upgradeOn[0].allowUids', /array of uids/],
  [{ upgradeOn: [{ socket: '/run/x.sock', allowGids: ['staff'] }] }, 'options.upgradeOn[0].allowGids', /array of gids/],
  [{ upgradeOn: [{ socket: '/run/x.sock', allowGids: [10] }], stopOn: [{ socket: '/run/x.sock', allowGids: [11] }] }, 'options.stopOn[0]', /other settings/],
  [{ upgradeOn: [{ socket: '/run/x.sock' }], stopOn: [{ socket: '/run/x.sock', mode: 0o660 }] }, 'options.stopOn[0]', /other settings than an earlier trigger/],
  [{ systemd: 'yes' }, 'options.systemd', /'auto' or false/],
  [{ fdStore: 1 }, 'options.fdStore', /boolean/],
  [{ pidFile: '' }, 'options.pidFile', /non-empty path/],
  [{ command: 'node app.js' }, 'options.command', /object/],
  [{ command: { args: 'x' } }, 'options.command.args', /array of strings/],
  [{ command: { cwd: 'relative/dir' } }, 'options.command.cwd', /absolute path/],
  [{ command: { shell: true } }, 'options.command.shell', /not a command field/],
  [{ upgradeOn: ['SIGSEGV'] }, 'options.upgradeOn[0]', /can be caught/],
  [{ stopOn: ['SIGBUS'] }, 'options.stopOn[0]', /can be caught/],
  [{ partialStopOn: ['SIGFPE'] }, 'options.partialStopOn[0]', /can be caught/],
  [{ upgradeOn: ['SIGILL'] }, 'options.upgradeOn[0]', /can be caught/],
  [{ upgradeOn: ['SIGPROF'] }, 'options.upgradeOn[0]', /can be caught/],
  [{ upgradeOn: ['toString'] }, 'options.upgradeOn[0]', /signal name/],
  [{ probation: -1 }, 'options.probation', /integer from 0/],
  [{ probation: 1e300 }, 'options.probation', /integer from 0/],
  [{ pidFileMode: 0o4755 }, 'options.pidFileMode', /integer from 0 to 511/],
  [{ maxDrainingGenerations: 0 }, 'options.maxDrainingGenerations', /integer from 1 to 64/],
  [{ maxDrainingGenerations: 2.5 }, 'options.maxDrainingGenerations', /integer from 1 to 64/],
  [{ maxDrainingGenerations: '3' }, 'options.maxDrainingGenerations', /integer from 1 to 64/],
  [{ maxDrainingGenerations: 65 }, 'options.maxDrainingGenerations', /integer from 1 to 64/],
  [{ niceWhileStarting: -1 }, 'options.niceWhileStarting', /integer from 0 to 19/],
  [{ niceWhileStarting: 20 }, 'options.niceWhileStarting', /integer from 0 to 19/],
  [{ niceWhileStarting: 2.5 }, 'options.niceWhileStarting', /integer from 0 to 19/],
  [{ niceWhileStarting: true }, 'options.niceWhileStarting', /integer from 0 to 19/],
  [{ stopDelay: -1 }, 'options.stopDelay', /integer from 0/],
  [{ upgradeOn: [{ rssAbove: 1000 }] }, 'options.upgradeOn[0].rssAbove', /integer from 1048576/],
  [{ upgradeOn: [{ rssAbove: 1e9, checkEvery: 10 }] }, 'options.upgradeOn[0].checkEvery', /integer from 100/],
  [{ upgradeOn: [{ rssAbove: 1e9, every: 1 }] }, 'options.upgradeOn[0].every', /not a field of an rssAbove trigger/],
  [{ upgradeOn: [{ every: 10 }] }, 'options.upgradeOn[0].every', /integer from 1000/],
  [{ upgradeOn: [{ every: 60_000, jitter: 0.9 }] }, 'options.upgradeOn[0].jitter', /number from 0 to 0.5/],
  [{ stopOn: [{ every: 60_000 }] }, 'options.stopOn[0]', /goes in upgradeOn/],
  [{ stopDelay: '5s' }, 'options.stopDelay', /integer from 0/],
  [{ probes: 9090 }, 'options.probes', /must be \{ port, host \} or \{ socket \}/],
  [{ probes: { port: 70000 } }, 'options.probes.port', /integer from 0 to 65535/],
  [{ probes: { port: 9090, host: '' } }, 'options.probes.host', /non-empty string/],
  [{ probes: { port: 9090, path: '/x' } }, 'options.probes.path', /not a field of options.probes/],
  [{ probes: { socket: '' } }, 'options.probes.socket', /filesystem path or an abstract name/],
  [{ probes: { socket: '/run/p.sock', mode: 0o1777 } }, 'options.probes.mode', /integer from 0 to 511/],
];

for (const [input, option, message] of invalid) {
  test(`invalid ${option}: ${JSON.stringify(input)}`, (t) => {
    const error = t.throws(() => resolveOptions(input), { code: 'ERR_ECDYSIS_INVALID_OPTION', message });
    t.is((error as unknown as { option?: string }).option, option);
    t.true(error!.message.startsWith(`"${option}"`), error!.message);
  });
}

test('one control socket in several trigger lists takes each of their commands', (t) => {
  const options = resolveOptions({ upgradeOn: ['SIGHUP', { socket: 'run/ctl.sock' }], stopOn: [{ socket: 'run/ctl.sock' }] });
  t.deepEqual(options.controlSockets, [{ path: `${process.cwd()}/run/ctl.sock`, actions: ['upgrade', 'stop'], mode: 0o600, group: undefined, allowUids: [], allowGids: [] }]);
});

test('the same signal may be listed twice for the same action', (t) => {
  t.notThrows(() => resolveOptions({ stopOn: ['SIGTERM', 'SIGTERM'] }));
});

test('stopDelay and probes: defaults and what they resolve to', (t) => {
  t.is(resolveOptions({}).stopDelay, 0);
  t.is(resolveOptions({}).probes, undefined);
  t.deepEqual(resolveOptions({ probes: { port: 9090 } }).probes, { kind: 'tcp', host: '127.0.0.1', port: 9090 });
  t.deepEqual(resolveOptions({ probes: { socket: 'run/probes.sock', mode: 0o660 } }).probes, { kind: 'unix', path: `${process.cwd()}/run/probes.sock`, mode: 0o660 });
});

test('timer triggers: rssAbove (checked every 10 s by default) and every (10% jitter by default) go with the signals', (t) => {
  const options = resolveOptions({ upgradeOn: ['SIGHUP', { rssAbove: 512 * 1024 * 1024 }, { every: 3_600_000, jitter: 0.2 }] });
  t.deepEqual(options.timers, [
    { kind: 'rss', bytes: 512 * 1024 * 1024, checkEvery: 10_000 },
    { kind: 'every', ms: 3_600_000, jitter: 0.2 },
  ]);
  t.deepEqual([...options.signals], [['SIGHUP', 'upgrade'], ['SIGTERM', 'stop'], ['SIGINT', 'stop']]);
});
