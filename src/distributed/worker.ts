import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Consumer, EachBatchPayload, Producer } from 'kafkajs';
import { openCatalogClient, type SqlClient } from '../catalog/catalog.js';
import { CatalogStore } from '../catalog/store.js';
import type { IngestOptions } from '../config/options.js';
import { PostgresDeduplicator } from '../dedup/postgres.js';
import { Fetcher } from '../fetch/fetcher.js';
import { parsePolicy } from '../geo/policy.js';
import { log as defaultLogger, type Logger } from '../log.js';
import { processLimits } from '../pipeline/ingest.js';
import { processPart, type RunContext, type StatusLine } from '../pipeline/part.js';
import type { SourceRecord } from '../sources/read.js';
import { openStorage } from '../storage/s3.js';
import type { Storage } from '../storage/storage.js';
import { writeWidsIndex, type ShardInfo } from '../webdataset/writer.js';
import { createKafka, parseUnitMessage, resolveBrokers, type UnitMessage } from './kafka.js';
import { resolveCatalogUrl } from './submit.js';

/** Events per produce request. */
const EVENT_BATCH = 500;

/**
 * How long a stop waits for the unit in progress, then for the consumer to leave the
 * group: together under the 120 s grace period the deployment files give a worker.
 */
const UNIT_GRACE_MS = 90_000;
const DISCONNECT_GRACE_MS = 10_000;

export interface WorkerHandle {
  /** Resolves when the worker has stopped after `stop`. */
  done: Promise<void>;
  /** Stops after the unit in progress, which is finished and committed first. */
  stop(): Promise<void>;
}

async function readUnit(context: RunContext, message: UnitMessage): Promise<SourceRecord[]> {
  const text = (await context.storage.readObject(message.path)).toString('utf8');
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as SourceRecord);
}

async function* fromArray<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

async function sendEvents(producer: Producer, topic: string, runId: string, lines: StatusLine[]): Promise<void> {
  for (let start = 0; start < lines.length; start += EVENT_BATCH) {
    const messages = lines.slice(start, start + EVENT_BATCH).map((line) => ({ key: `${runId}:${line.row}`, value: JSON.stringify({ run_id: runId, ...line }) }));
    await producer.send({ topic, messages });
  }
}

/**
 * Marks a run finished once its last unit is done, and writes its run.json and shard
 * index beside the shards. Two workers that finish the last units together both write
 * the same content.
 */
async function finishRunIfComplete(client: SqlClient, storage: Storage, options: IngestOptions, runId: string): Promise<void> {
  const { rows } = await client.query<{ pending: string; rows: string; ok: string; rejected: string }>(
    `select count(*) filter (where status <> 'done') as pending, coalesce(sum(rows), 0) as rows,
            coalesce(sum(ok), 0) as ok, coalesce(sum(rejected), 0) as rejected
     from units where run_id = $1`,
    [runId],
  );
  const totals = rows[0]!;
  if (Number(totals.pending) > 0) return;

  const reasonRows = await client.query<{ reason: string; count: string }>('select reason, count(*) as count from rejections where run_id = $1 group by reason', [runId]);
  const reasons = Object.fromEntries(reasonRows.rows.map((row) => [row.reason, Number(row.count)]));
  const run = { inputRows: Number(totals.rows), ok: Number(totals.ok), rejected: Number(totals.rejected), reasons };
  await new CatalogStore(client).finishRun(runId, run);

  const shardRows = await client.query<{ name: string; samples: number; bytes: string; md5: string; first_key: string; last_key: string }>(
    'select name, samples, bytes, md5, first_key, last_key from shards where run_id = $1 order by name',
    [runId],
  );
  const shards: ShardInfo[] = shardRows.rows.map((row) => ({
    name: row.name,
    path: `${row.name}.tar`,
    samples: row.samples,
    bytes: Number(row.bytes),
    md5: row.md5,
    firstKey: row.first_key,
    lastKey: row.last_key,
  }));
  if (shards.length > 0) await writeWidsIndex(storage, options.shardPrefix, shards);
  const summary = {
    run_id: runId,
    source: options.source,
    output: options.output,
    policy: options.policy,
    finished_at: new Date().toISOString(),
    input_rows: run.inputRows,
    ok: run.ok,
    rejected: run.rejected,
    reasons,
    shards: shards.map((shard) => shard.path),
    catalog: 'postgres',
    interrupted: false,
  };
  await storage.writeObject('run.json', `${JSON.stringify(summary, null, 2)}\n`);
}

/**
 * Starts a worker: it joins the consumer group of the units topic and processes one unit
 * at a time, end to end. The offset of a unit is committed only after its shard, status
 * file, catalog rows and events are written, so a crash before that replays the unit,
 * and the replay writes the same shard name, keys and rows.
 */
export async function startWorker(options: IngestOptions, { logger = defaultLogger }: { logger?: Logger } = {}): Promise<WorkerHandle> {
  const workerId = `${os.hostname()}-${process.pid}-${randomBytes(2).toString('hex')}`;
  const workerLogger = logger.child({ worker: workerId });
  const client = await openCatalogClient(resolveCatalogUrl(options), undefined);
  const storage = openStorage(options.output);
  const kafka = createKafka(resolveBrokers(options), `geoshard-worker-${workerId}`, workerLogger);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  const fetcher = new Fetcher(options);
  const limits = processLimits(options);
  const policy = parsePolicy(options.policy);
  const catalog = new CatalogStore(client);

  async function processUnit(message: UnitMessage, heartbeat: () => Promise<void>): Promise<void> {
    const unitLogger = workerLogger.child({ run: message.run_id, unit: message.unit });
    const existing = await client.query<{ status: string }>('select status from units where run_id = $1 and unit = $2', [message.run_id, message.unit]);
    if (existing.rows[0]?.status === 'done') {
      unitLogger.info('unit already done, skipping');
      return;
    }
    await client.query(
      `update units set status = 'running', worker = $3, attempts = attempts + 1, started_at = now() where run_id = $1 and unit = $2`,
      [message.run_id, message.unit, workerId],
    );

    const context: RunContext = {
      runId: message.run_id,
      options,
      policy,
      storage,
      catalog,
      dedup: new PostgresDeduplicator(client, message.run_id, options.dedup, options.nearRadius),
      fetcher,
      ...limits,
      logger: unitLogger,
    };
    const lines: StatusLine[] = [];
    const records = await readUnit(context, message);
    const started = Date.now();
    const result = await processPart(fromArray(records), context, {
      firstShard: message.unit,
      // One shard per unit, named after it, whatever the order units are processed in.
      shardSize: Number.MAX_SAFE_INTEGER,
      statusName: `${options.shardPrefix}-status-${String(message.unit).padStart(6, '0')}.jsonl`,
      onStatus: (line) => lines.push(line),
      onRow: heartbeat,
    });
    await sendEvents(producer, options.eventsTopic, message.run_id, lines);
    await client.query(
      `update units set status = 'done', finished_at = now(), ok = $3, rejected = $4, reasons = $5 where run_id = $1 and unit = $2`,
      [message.run_id, message.unit, result.ok, result.rejected, JSON.stringify(result.reasons)],
    );
    await finishRunIfComplete(client, storage, options, message.run_id);
    unitLogger.info({ rows: result.rows, ok: result.ok, rejected: result.rejected, seconds: (Date.now() - started) / 1000 }, 'unit done');
  }

  let stopping = false;
  let consumer: Consumer | null = null;
  let inProgress: Promise<void> | null = null;
  let resolveDone!: () => void;
  const done = new Promise<void>((resolve) => {
    resolveDone = resolve;
  });

  async function eachBatch({ batch, resolveOffset, heartbeat, isRunning, isStale }: EachBatchPayload): Promise<void> {
    for (const kafkaMessage of batch.messages) {
      if (stopping || !isRunning() || isStale()) break;
      let unit: UnitMessage;
      try {
        unit = parseUnitMessage(kafkaMessage.value);
      } catch (error) {
        // A message that can never be processed is logged and skipped rather than retried forever.
        workerLogger.error({ err: error, partition: batch.partition, offset: kafkaMessage.offset }, 'skipping an invalid unit message');
        resolveOffset(kafkaMessage.offset);
        continue;
      }
      inProgress = processUnit(unit, heartbeat);
      try {
        await inProgress;
      } finally {
        inProgress = null;
      }
      resolveOffset(kafkaMessage.offset);
      await consumer!.commitOffsets([{ topic: batch.topic, partition: batch.partition, offset: (BigInt(kafkaMessage.offset) + 1n).toString() }]);
      await heartbeat();
    }
  }

  /**
   * Joins the group and consumes. kafkajs restarts a consumer after retriable failures but
   * gives up after a non-retriable one, such as finding no group coordinator for a minute
   * after a broker restart. Then this starts a new consumer, so the worker outlives the outage.
   */
  async function startConsumer(attempt = 0): Promise<void> {
    if (stopping) return;
    const next = kafka.consumer({
      groupId: options.consumerGroup,
      // A unit takes seconds to minutes, but heartbeats come from inside the work. So these
      // time-outs only decide how soon the units of a dead worker move to another one.
      sessionTimeout: options.sessionTimeoutMs,
      rebalanceTimeout: options.sessionTimeoutMs + 15_000,
      heartbeatInterval: Math.max(1_000, Math.floor(options.sessionTimeoutMs / 10)),
      // Unit messages are a few hundred bytes: small fetches keep a worker from hoarding units.
      maxBytesPerPartition: 16 * 1024,
      maxBytes: 64 * 1024,
    });
    consumer = next;
    next.on(next.events.CRASH, (event) => {
      const { error, restart } = event.payload;
      workerLogger.error({ err: error, restart }, 'consumer crashed');
      if (restart || stopping) return;
      const delayMs = Math.min(30_000, 1_000 * 2 ** attempt);
      workerLogger.warn({ delayMs }, 'starting a new consumer');
      void next
        .disconnect()
        .catch(() => undefined)
        .then(() => sleep(delayMs))
        .then(() => startConsumer(attempt + 1))
        .catch((startError: unknown) => workerLogger.error({ err: startError }, 'consumer failed to start'));
    });
    try {
      await next.connect();
      await next.subscribe({ topic: options.unitsTopic, fromBeginning: true });
      await next.run({ autoCommit: false, eachBatchAutoResolve: false, partitionsConsumedConcurrently: 1, eachBatch });
    } catch (error) {
      if (stopping) return;
      const delayMs = Math.min(30_000, 1_000 * 2 ** attempt);
      workerLogger.error({ err: error, delayMs }, 'consumer failed to start, retrying');
      await next.disconnect().catch(() => undefined);
      await sleep(delayMs);
      return startConsumer(attempt + 1);
    }
  }

  await producer.connect();
  await startConsumer();
  workerLogger.info({ topic: options.unitsTopic, group: options.consumerGroup }, 'worker started');

  async function stop(): Promise<void> {
    if (stopping) return done;
    stopping = true;
    workerLogger.info('worker stopping after the unit in progress');
    // The batch handler stops after its current unit, whose offset is then committed.
    if (inProgress) {
      const finished = await Promise.race([inProgress.then(() => true, () => true), sleep(UNIT_GRACE_MS).then(() => false)]);
      if (!finished) workerLogger.warn({ graceMs: UNIT_GRACE_MS }, 'abandoning the unit in progress; it will run again elsewhere');
    }
    // kafkajs can wait indefinitely in disconnect() while it restarts a crashed consumer.
    const disconnected = await Promise.race([consumer?.disconnect().then(() => true, () => true) ?? true, sleep(DISCONNECT_GRACE_MS).then(() => false)]);
    if (!disconnected) workerLogger.warn({ graceMs: DISCONNECT_GRACE_MS }, 'consumer did not disconnect in time; the group will notice on its own');
    await producer.disconnect();
    await fetcher.close();
    await client.close();
    await storage.close();
    workerLogger.info('worker stopped');
    resolveDone();
  }

  return { done, stop };
}
