import { pino, type Logger } from 'pino';

/**
 * Creates the process-wide structured logger. Logs go to stderr as JSON lines so that
 * stdout stays free for command output. GEOSHARD_LOG_LEVEL sets the level; the default
 * is info, or warn when stderr is a terminal, where the progress bar reports instead.
 */
export function createLogger(bindings: Record<string, unknown> = {}): Logger {
  const level = process.env.GEOSHARD_LOG_LEVEL ?? (process.stderr.isTTY ? 'warn' : 'info');
  return pino({ level, base: { app: 'geoshard', ...bindings } }, pino.destination(2));
}

export const log: Logger = createLogger();

export type { Logger };
