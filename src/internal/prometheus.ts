/**
 * The Prometheus text exposition format (version 0.0.4), for a handful of
 * metric families: names and label names checked against the format's rules,
 * label values escaped.
 */

export interface MetricSample {
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  /** [a-zA-Z_:][a-zA-Z0-9_:]*; a counter's ends in _total. */
  name: string;
  help: string;
  type: 'counter' | 'gauge';
  samples: MetricSample[];
}

export const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
export const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** The content type a scraper asks for. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function prometheusText(families: readonly MetricFamily[]): string {
  let text = '';
  for (const family of families) {
    if (!METRIC_NAME.test(family.name)) throw new Error(`not a Prometheus metric name: ${family.name}`);
    text += `# HELP ${family.name} ${family.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${family.name} ${family.type}\n`;
    for (const sample of family.samples) {
      const labels = Object.entries(sample.labels).map(([name, value]) => {
        if (!LABEL_NAME.test(name) || name.startsWith('__')) throw new Error(`not a Prometheus label name: ${name}`);
        return `${name}="${value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`;
      });
      text += `${family.name}${labels.length > 0 ? `{${labels.join(',')}}` : ''} ${formatValue(sample.value)}\n`;
    }
  }
  return text;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}
