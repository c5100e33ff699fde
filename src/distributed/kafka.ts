import { Kafka, logLevel, type LogEntry } from 'kafkajs';
import type { IngestOptions } from '../config/options.js';
import type { Logger } from '../log.js';

/** A work unit message: references and counts, never image bytes. */
export interface UnitMessage {
  version: 1;
  run_id: string;
  unit: number;
  /** Object path of the unit's records, relative to the run's output storage. */
  path: string;
  first_row: number;
  rows: number;
}

export function parseUnitMessage(value: Buffer | null): UnitMessage {
  if (!value) throw new Error('Invalid unit message: empty value');
  const message = JSON.parse(value.toString('utf8')) as Partial<UnitMessage>;
  if (message.version !== 1 || typeof message.run_id !== 'string' || !Number.isInteger(message.unit) || typeof message.path !== 'string') {
    throw new Error(`Invalid unit message: ${value.toString('utf8').slice(0, 200)}`);
  }
  return message as UnitMessage;
}

/** Brokers from the options, else from GEOSHARD_KAFKA_BROKERS. */
export function resolveBrokers(options: Pick<IngestOptions, 'kafkaBrokers'>, env: NodeJS.ProcessEnv = process.env): string[] {
  const value = options.kafkaBrokers ?? env.GEOSHARD_KAFKA_BROKERS;
  if (!value) throw new Error('Missing Kafka brokers: set kafka_brokers in the pipeline file or GEOSHARD_KAFKA_BROKERS');
  return value.split(',').map((broker) => broker.trim()).filter(Boolean);
}

/**
 * Maps kafkajs levels to the logger's. kafkajs logs conditions it retries (a rebalance, a
 * leader move) as errors, so they become warnings. Failures it gives up on reach the
 * consumer's crash event, which is logged as an error.
 */
const LEVELS: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'warn',
  [logLevel.WARN]: 'warn',
  [logLevel.INFO]: 'info',
  [logLevel.DEBUG]: 'debug',
};

/** Creates a kafkajs client whose log lines go to the structured logger. */
export function createKafka(brokers: string[], clientId: string, logger: Logger): Kafka {
  const kafkaLogger = logger.child({ component: 'kafka' });
  return new Kafka({
    clientId,
    brokers,
    logLevel: logLevel.WARN,
    // Reconnects through a broker restart: up to about two minutes of backoff.
    retry: { retries: 12, initialRetryTime: 300, maxRetryTime: 15_000 },
    logCreator:
      () =>
      ({ level, log: entry }: LogEntry) => {
        const { message, ...context } = entry;
        kafkaLogger[LEVELS[level] ?? 'info'](context, message);
      },
  });
}
