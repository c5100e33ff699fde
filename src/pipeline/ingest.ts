import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pLimit from 'p-limit';
import { openCatalogClient } from '../catalog/catalog.js';
import { CatalogStore } from '../catalog/store.js';
import type { IngestOptions } from '../config/options.js';
import { MemoryDeduplicator } from '../dedup/index.js';
import { Fetcher } from '../fetch/fetcher.js';
import type { LookupFunction } from '../fetch/guard.js';
import { parsePolicy } from '../geo/policy.js';
import { log as defaultLogger, type Logger } from '../log.js';
import { detectFormat, readSource } from '../sources/read.js';
import { openStorage } from '../storage/s3.js';
import { isS3Url, type Storage } from '../storage/storage.js';
import { writeWidsIndex } from '../webdataset/writer.js';
import { processPart, type RunContext } from './part.js';
import { createProgress } from './progress.js';

export type { StatusLine } from './part.js';

export interface RunSummary {
  run_id: string;
  source: string;
  output: string;
  policy: string;
  started_at: string;
  finished_at: string;
  duration_s: number;
  input_rows: number;
  ok: number;
  rejected: number;
  reasons: Record<string, number>;
  shards: string[];
  catalog: string;
  /** True when the run was stopped early: the rows read until then are complete and accounted for. */
  interrupted: boolean;
}

export interface IngestHooks {
  logger?: Logger;
  /** Replaces DNS resolution; tests use it to map names to chosen addresses. */
  lookup?: LookupFunction;
  /** Stops reading the source; rows already read are finished and written. */
  signal?: AbortSignal;
}

async function* untilAborted<T>(source: AsyncIterable<T>, signal: AbortSignal | undefined): AsyncGenerator<T> {
  for await (const item of source) {
    if (signal?.aborted) return;
    yield item;
  }
}

/** Objects of an earlier run; the catalog folder is not among them, since runs accumulate there. */
function isRunOutput(objectPath: string): boolean {
  return objectPath.startsWith('status/') || objectPath === 'run.json' || /^[^/]+\.(tar|stats\.json|wids\.json)$/.test(objectPath);
}

/**
 * Stops when the output already contains another run's shards, since a reader that takes
 * every .tar of the folder would mix the two runs. With `overwrite`, deletes them first.
 */
async function clearEarlierRun(storage: Storage, overwrite: boolean, logger: Logger): Promise<void> {
  const earlier = (await storage.list()).filter((object) => isRunOutput(object.path));
  if (earlier.length === 0) return;
  if (!overwrite) {
    throw new Error(
      `Output ${storage.root} already contains ${earlier.length} files of an earlier run (${earlier[0]!.path}...): choose another output or pass --overwrite to delete them`,
    );
  }
  for (const object of earlier) await storage.remove(object.path);
  logger.warn({ output: storage.root, removed: earlier.length }, 'deleted the files of an earlier run');
}

export function newRunId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `run-${stamp}-${randomBytes(3).toString('hex')}`;
}

/** Limits shared by every part of a run in this process. */
export function processLimits(options: IngestOptions): Pick<RunContext, 'fetchLimit' | 'decodeLimit'> {
  return {
    fetchLimit: pLimit(options.concurrency),
    decodeLimit: pLimit(options.decodeConcurrency || os.availableParallelism()),
  };
}

/**
 * Runs one ingestion on this machine: reads the source, processes rows in parallel, and
 * decides dedup, shard placement and status in input order. Every input row ends as
 * exactly one status line, so input rows always equal ok plus rejected.
 */
export async function ingest(options: IngestOptions, hooks: IngestHooks = {}): Promise<RunSummary> {
  const logger = hooks.logger ?? defaultLogger;
  const policy = parsePolicy(options.policy);
  const runId = newRunId();
  const startedAt = new Date();
  const s3Output = isS3Url(options.output);
  if (s3Output && !options.catalog) {
    throw new Error(`Output ${options.output} is on S3, where no embedded catalog can live: pass --catalog postgres://...`);
  }
  const output = s3Output ? options.output : path.resolve(options.output);
  const format = options.inputFormat === 'auto' ? await detectFormat(options.source) : options.inputFormat;

  const storage = openStorage(output);
  await clearEarlierRun(storage, options.overwrite, logger);
  const catalogDir = s3Output ? undefined : path.join(output, 'catalog');
  if (catalogDir && !options.catalog) await mkdir(output, { recursive: true });
  const catalog = new CatalogStore(await openCatalogClient(options.catalog, catalogDir));
  await catalog.startRun({ id: runId, source: options.source, output, policy: policy.name, options });
  logger.info({ run: runId, source: options.source, format, output, policy: policy.name, catalog: catalog.client.kind }, 'ingest started');

  const context: RunContext = {
    runId,
    options,
    policy,
    storage,
    catalog,
    dedup: new MemoryDeduplicator(options.dedup, options.nearRadius),
    fetcher: new Fetcher(options, { lookup: hooks.lookup }),
    ...processLimits(options),
    logger,
  };
  const progress = createProgress(options.progress, logger);

  let result;
  try {
    result = await processPart(untilAborted(readSource(options.source, format, { urlColumn: options.urlColumn }), hooks.signal), context, {
      firstShard: 0,
      shardSize: options.shardSize,
      statusName: `${options.shardPrefix}-status-000000.jsonl`,
      onProgress: (counts) => progress.update(counts),
    });
    if (result.shards.length > 0) await writeWidsIndex(storage, options.shardPrefix, result.shards);
    await catalog.finishRun(runId, { inputRows: result.rows, ok: result.ok, rejected: result.rejected, reasons: result.reasons });
  } finally {
    progress.stop();
    await context.fetcher.close();
    await catalog.client.close();
  }

  const finishedAt = new Date();
  const summary: RunSummary = {
    run_id: runId,
    source: options.source,
    output,
    policy: policy.name,
    started_at: startedAt.toISOString(),
    finished_at: finishedAt.toISOString(),
    duration_s: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    input_rows: result.rows,
    ok: result.ok,
    rejected: result.rejected,
    reasons: result.reasons,
    shards: result.shards.map((shard) => shard.path),
    catalog: options.catalog ? 'postgres' : catalogDir!,
    interrupted: hooks.signal?.aborted === true,
  };
  if (result.rows === 0 && !summary.interrupted) logger.warn({ source: options.source }, 'the source has no rows');
  await storage.writeObject('run.json', `${JSON.stringify(summary, null, 2)}\n`);
  await storage.close();
  logger.info({ run: runId, rows: result.rows, ok: result.ok, rejected: result.rejected, reasons: result.reasons, shards: result.shards.length }, 'ingest finished');
  return summary;
}
