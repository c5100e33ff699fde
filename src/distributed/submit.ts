import { openCatalogClient, type SqlClient } from '../catalog/catalog.js';
import { CatalogStore } from '../catalog/store.js';
import type { IngestOptions } from '../config/options.js';
import { parsePolicy } from '../geo/policy.js';
import { log as defaultLogger, type Logger } from '../log.js';
import { newRunId } from '../pipeline/ingest.js';
import { detectFormat, readSource, type SourceRecord } from '../sources/read.js';
import { openStorage } from '../storage/s3.js';
import { isS3Url, type Storage } from '../storage/storage.js';
import { createKafka, resolveBrokers, type UnitMessage } from './kafka.js';

/** Partitions of topics that submit creates: more than the workers a run is likely to have. */
const DEFAULT_PARTITIONS = 32;

export interface SubmitResult {
  runId: string;
  units: number;
  rows: number;
}

/** Returns the catalog URL of a distributed run, which needs a shared PostgreSQL server. */
export function resolveCatalogUrl(options: Pick<IngestOptions, 'catalog'>, env: NodeJS.ProcessEnv = process.env): string {
  const url = options.catalog ?? env.GEOSHARD_CATALOG_URL;
  if (!url) throw new Error('Missing catalog: workers share a PostgreSQL catalog; set catalog: postgres://... or GEOSHARD_CATALOG_URL');
  return url;
}

export function unitPath(unit: number): string {
  return `units/unit-${String(unit).padStart(6, '0')}.jsonl`;
}

async function* chunk(records: AsyncIterable<SourceRecord>, size: number): AsyncGenerator<SourceRecord[]> {
  let current: SourceRecord[] = [];
  for await (const record of records) {
    current.push(record);
    if (current.length >= size) {
      yield current;
      current = [];
    }
  }
  if (current.length > 0) yield current;
}

async function recordUnit(client: SqlClient, runId: string, unit: number, first: number, rows: number): Promise<void> {
  await client.query('insert into units (run_id, unit, path, first_row, rows) values ($1, $2, $3, $4, $5) on conflict do nothing', [
    runId,
    unit,
    unitPath(unit),
    first,
    rows,
  ]);
}

/**
 * Splits the source into work units of `shard_size` input rows, stores each unit's records
 * under OUTPUT/units/, records the units in the catalog and publishes one small Kafka
 * message per unit. Each unit later becomes one shard, named after the unit.
 */
export async function submit(options: IngestOptions, { logger = defaultLogger }: { logger?: Logger } = {}): Promise<SubmitResult> {
  const brokers = resolveBrokers(options);
  const catalogUrl = resolveCatalogUrl(options);
  const policy = parsePolicy(options.policy);
  const runId = options.runId ?? newRunId();
  const storage: Storage = openStorage(options.output);
  const client = await openCatalogClient(catalogUrl, undefined);
  const kafka = createKafka(brokers, `geoshard-submit-${runId}`, logger);
  const admin = kafka.admin();
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });

  try {
    const format = options.inputFormat === 'auto' ? await detectFormat(options.source) : options.inputFormat;
    if (format === 'folder' && !isS3Url(options.source)) {
      logger.warn({ source: options.source }, 'a local folder source works only when every worker sees the same path');
    }
    await new CatalogStore(client).startRun({ id: runId, source: options.source, output: options.output, policy: policy.name, options });

    await admin.connect();
    const existing = new Set(await admin.listTopics());
    const missing = [options.unitsTopic, options.eventsTopic].filter((topic) => !existing.has(topic));
    if (missing.length > 0) {
      await admin.createTopics({ topics: missing.map((topic) => ({ topic, numPartitions: DEFAULT_PARTITIONS })), waitForLeaders: true });
    }
    await producer.connect();

    let units = 0;
    let rows = 0;
    for await (const records of chunk(readSource(options.source, format, { urlColumn: options.urlColumn }), options.shardSize)) {
      const unit = units;
      const body = records.map((record) => JSON.stringify(record)).join('\n');
      await storage.writeObject(unitPath(unit), `${body}\n`);
      await recordUnit(client, runId, unit, records[0]!.index, records.length);
      const message: UnitMessage = { version: 1, run_id: runId, unit, path: unitPath(unit), first_row: records[0]!.index, rows: records.length };
      await producer.send({ topic: options.unitsTopic, messages: [{ key: `${runId}:${unit}`, value: JSON.stringify(message) }] });
      units += 1;
      rows += records.length;
    }
    logger.info({ run: runId, units, rows, topic: options.unitsTopic }, 'run submitted');
    return { runId, units, rows };
  } finally {
    await producer.disconnect().catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
    await client.close();
    await storage.close();
  }
}
