import cliProgress from 'cli-progress';
import type { Logger } from '../log.js';

export interface ProgressCounts {
  rows: number;
  ok: number;
  rejected: number;
}

export interface ProgressReporter {
  update(counts: ProgressCounts): void;
  stop(): void;
}

const LOG_INTERVAL_MS = 5_000;

/**
 * Chooses how a long run shows progress: a bar with counts, rate and ETA on a terminal,
 * one structured log line every few seconds otherwise. `total` is the number of input rows
 * when known in advance; without it the bar counts up and shows no ETA.
 */
export function createProgress(mode: 'auto' | 'bar' | 'log' | 'none', logger: Logger, total?: number): ProgressReporter {
  const useBar = mode === 'bar' || (mode === 'auto' && process.stderr.isTTY === true);
  if (mode === 'none') return { update: () => undefined, stop: () => undefined };
  return useBar ? barReporter(total) : logReporter(logger);
}

function barReporter(total: number | undefined): ProgressReporter {
  const format = total
    ? 'ingest |{bar}| {percentage}% {value}/{total} rows | ok {ok} rejected {rejected} | {rate} rows/s | ETA {eta_formatted}'
    : 'ingest {value} rows | ok {ok} rejected {rejected} | {rate} rows/s | {duration_formatted}';
  const bar = new cliProgress.SingleBar(
    { format, stream: process.stderr, hideCursor: true, etaBuffer: 200, fps: 5 },
    cliProgress.Presets.shades_classic,
  );
  const started = Date.now();
  bar.start(total ?? 0, 0, { ok: 0, rejected: 0, rate: '0.0' });
  return {
    update: (counts) => {
      const seconds = Math.max((Date.now() - started) / 1000, 0.001);
      bar.update(counts.rows, { ok: counts.ok, rejected: counts.rejected, rate: (counts.rows / seconds).toFixed(1) });
    },
    stop: () => bar.stop(),
  };
}

function logReporter(logger: Logger): ProgressReporter {
  const started = Date.now();
  let lastLog = started;
  return {
    update: (counts) => {
      const now = Date.now();
      if (now - lastLog < LOG_INTERVAL_MS) return;
      lastLog = now;
      logger.info({ ...counts, rowsPerSecond: Number((counts.rows / ((now - started) / 1000)).toFixed(1)) }, 'ingest progress');
    },
    stop: () => undefined,
  };
}
