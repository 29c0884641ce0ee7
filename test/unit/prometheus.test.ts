/** The metrics in the Prometheus text format, checked against the format's rules by a parser of its own. */
import test from 'ava';
import { Ecdysis, prometheusText, type MetricFamily } from '../../src/index.ts';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

interface Parsed {
  families: Map<string, { type: string; help: string; samples: { labels: Record<string, string>; value: number }[] }>;
}

/**
 * The text exposition format, version 0.0.4: HELP and TYPE lines, once each,
 * before the family's samples; samples of a family together; names, label
 * names and escapes as the format allows. Throws on anything else.
 */
function parse(text: string): Parsed {
  const families: Parsed['families'] = new Map();
  let current: string | undefined;
  const done = new Set<string>();
  if (!text.endsWith('\n')) throw new Error('the text must end with a newline');
  for (const line of text.slice(0, -1).split('\n')) {
    const meta = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string];
      if (!METRIC_NAME.test(name)) throw new Error(`bad metric name ${name}`);
      if (name !== current) {
        if (current !== undefined) done.add(current);
        if (done.has(name)) throw new Error(`${name}: its lines are not together`);
        current = name;
        families.set(name, { type: '', help: '', samples: [] });
      }
      const family = families.get(name)!;
      if (kind === 'TYPE') {
        if (family.type || family.samples.length > 0) throw new Error(`${name}: TYPE twice, or after a sample`);
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`${name}: type ${rest}`);
        family.type = rest;
      } else {
        if (family.help) throw new Error(`${name}: HELP twice`);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ''))) throw new Error(`${name}: a bad escape in HELP`);
        family.help = rest;
      }
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!sample) throw new Error(`not a sample line: ${line}`);
    const [, name, , labelText, value] = sample as unknown as [string, string, string | undefined, string | undefined, string];
    if (name !== current) throw new Error(`${name}: a sample outside its family`);
    const labels: Record<string, string> = {};
    if (labelText !== undefined && labelText !== '') {
      const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
      let at = 0;
      while (at < labelText.length) {
        pair.lastIndex = at;
        const m = pair.exec(labelText);
        if (!m) throw new Error(`${name}: bad labels ${labelText}`);
        const [, label, raw] = m as unknown as [string, string, string];
        if (!LABEL_NAME.test(label) || label.startsWith('__')) throw new Error(`${name}: label name ${label}`);
        if (label in labels) throw new Error(`${name}: label ${label} twice`);
        labels[label] = raw.replace(/\\(["\\n])/g, (_, c: string) => (c === 'n' ? '\n' : c));
        at = pair.lastIndex;
      }
    }
    const number = Number(value === '+Inf' ? Infinity : value === '-Inf' ? -Infinity : value);
    if (Number.isNaN(number) && value !== 'NaN') throw new Error(`${name}: value ${value}`);
    const family = families.get(name)!;
    const key = JSON.stringify(Object.entries(labels).sort());
    if (family.samples.some((s) => JSON.stringify(Object.entries(s.labels).sort()) === key)) throw new Error(`${name}: the same labels twice`);
    family.samples.push({ labels, value: number });
  }
  return { families };
}

test("the library's metrics follow Prometheus's rules: names, label names, HELP and TYPE for each family, counters named *_total, units in the name", async (t) => {
  const ecdysis = await Ecdysis.create({ upgradeOn: [], stopOn: [] });
  t.teardown(() => ecdysis.stop());
  await ecdysis.ready();
  const text = prometheusText(ecdysis.metrics());
  const { families } = parse(text);
  t.true(families.size >= 6, text);
  for (const [name, family] of families) {
    t.true(name.startsWith('ecdysis_'), `${name}: one namespace`);
    t.truthy(family.help, `${name} has HELP`);
    t.true(family.type === 'counter' || family.type === 'gauge', `${name}: ${family.type}`);
    if (family.type === 'counter') t.true(name.endsWith('_total'), `${name}: a counter ends in _total`);
    else t.false(name.endsWith('_total'), `${name}: only counters end in _total`);
    if (name.includes('duration')) t.true(name.endsWith('_seconds'), `${name}: base unit seconds`);
    for (const sample of family.samples) t.true(Number.isFinite(sample.value) && (family.type !== 'counter' || sample.value >= 0));
  }
  t.deepEqual(families.get('ecdysis_upgrades_total')?.samples.map((s) => s.labels.outcome), ['ok', 'taken_back', 'rolled_back'], 'the outcomes known up front are there at 0');
  t.is(families.get('ecdysis_ready')?.samples[0]?.value, 1);
  t.is(families.get('ecdysis_generation')?.samples[0]?.value, 0);
});

test('prometheusText escapes label values and HELP text, and refuses names the format does not allow', (t) => {
  const family: MetricFamily = { name: 'x_total', help: 'back\\slash and\nnewline', type: 'counter', samples: [{ labels: { code: 'a"b\\c\nd' }, value: 2 }] };
  const text = prometheusText([family]);
  t.is(text, '# HELP x_total back\\\\slash and\\nnewline\n# TYPE x_total counter\nx_total{code="a\\"b\\\\c\\nd"} 2\n');
  t.deepEqual(parse(text).families.get('x_total')?.samples, [{ labels: { code: 'a"b\\c\nd' }, value: 2 }]);
  t.throws(() => prometheusText([{ ...family, name: '1bad' }]), { message: /not a Prometheus metric name/ });
  t.throws(() => prometheusText([{ ...family, samples: [{ labels: { 'bad-label': 'x' }, value: 1 }] }]), { message: /not a Prometheus label name/ });
  t.throws(() => prometheusText([{ ...family, samples: [{ labels: { __reserved: 'x' }, value: 1 }] }]), { message: /not a Prometheus label name/ });
});
