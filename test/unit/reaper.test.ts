/**
 * The reaper of `ecdysis run` (native reapChildren) must leave Node's own
 * children to Node: a child libuv never sees exit keeps its handle active, so
 * the supervisor would never exit. In a separate process, whose event loop is
 * held up while its child dies, so that the reaper certainly looks first.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { compiledRoot } from '../helpers/generations.ts';

function runScenario(leaveNodesChild: boolean): { reaped: number[]; childPid: number; exitSeen: boolean; status: number | null; stderr: string } {
  const script = `
    import { spawn } from 'node:child_process';
    import { readFileSync, readdirSync } from 'node:fs';
    import { native } from '${compiledRoot}src/internal/native.js';
    // A Node child's leader is a zombie while its other threads still exit: reapable only once they have.
    const state = (pid) => { try { const s = readFileSync('/proc/' + pid + '/stat', 'utf8'); const st = s.slice(s.lastIndexOf(')') + 2)[0]; return st === 'Z' && readdirSync('/proc/' + pid + '/task').length > 1 ? 'exiting' : st; } catch { return undefined; } };
    const child = spawn(process.execPath, ['-e', 'process.exit(3)'], { stdio: 'ignore' });
    let exitSeen = false;
    child.on('exit', () => { exitSeen = true; });
    // Held up (no turn of the event loop) until the child is a reapable zombie: libuv has not reaped it yet.
    const deadline = Date.now() + 20_000;
    while (state(child.pid) !== 'Z' && Date.now() < deadline);
    const reaped = native().reapChildren(${leaveNodesChild ? '[child.pid]' : '[]'}).map((c) => c.pid);
    // Now the event loop turns: Node's reaping of its child, and its 'exit' event, if it still can.
    await new Promise((resolve) => { const t = setInterval(() => { if (exitSeen) { clearInterval(t); resolve(); } }, 5); setTimeout(() => { clearInterval(t); resolve(); }, 3_000); });
    process.stdout.write(JSON.stringify({ reaped, childPid: child.pid, exitSeen }));
    // A child handle libuv never saw exit would keep this process alive for ever.
    process.exit(0);`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
  return { ...(JSON.parse(run.stdout || '{}') as { reaped: number[]; childPid: number; exitSeen: boolean }), status: run.status, stderr: run.stderr };
}

test("reapChildren(leave): a child Node spawned is left to Node even when it died first, and its 'exit' event comes", (t) => {
  const result = runScenario(true);
  t.is(result.status, 0, result.stderr);
  t.deepEqual(result.reaped, []);
  t.true(result.exitSeen);
});

test('reapChildren() without leave takes the child from Node, which then never sees it exit: why the supervisor passes its child', (t) => {
  const result = runScenario(false);
  t.is(result.status, 0, result.stderr);
  t.deepEqual(result.reaped, [result.childPid]);
  t.false(result.exitSeen);
});
