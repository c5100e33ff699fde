import { randomBytes } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { finished } from 'node:stream/promises';
import pLimit, { type LimitFunction } from 'p-limit';
import { openCatalogClient } from '../catalog/catalog.js';
import { CatalogStore, type RejectionRow, type SampleRow } from '../catalog/store.js';
import type { IngestOptions } from '../config/options.js';
import { decodeImage, type DecodedImage } from '../decode/image.js';
import { DedupIndex } from '../dedup/index.js';
import { hashToHex } from '../dedup/phash.js';
import { Fetcher } from '../fetch/fetcher.js';
import type { LookupFunction } from '../fetch/guard.js';
import { decideRegion, parsePolicy, type RegionDecision, type RegionPolicy } from '../geo/policy.js';
import { log as defaultLogger, type Logger } from '../log.js';
import { detectFormat, readSource, type SourceRecord } from '../sources/read.js';
import { toInputRow, type InputRow } from '../sources/row.js';
import { ShardWriter, writeWidsIndex } from '../webdataset/writer.js';
import { orderedMap } from './ordered.js';
import { createProgress } from './progress.js';
import { RejectionError, type Reason } from './reasons.js';

/** One line of DIR/status/*.jsonl: the outcome of one input row. */
export interface StatusLine {
  row: number;
  url: string | null;
  status: 'ok' | 'rejected';
  reason: Reason | null;
  detail: string | null;
  key: string | null;
  shard: string | null;
  territory: string | null;
  location_source: string | null;
  duplicate_of: string | null;
}

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
}

export interface IngestHooks {
  logger?: Logger;
  /** Replaces DNS resolution; tests use it to map names to chosen addresses. */
  lookup?: LookupFunction;
}

type RowOutcome =
  | { kind: 'ok'; index: number; row: InputRow; image: DecodedImage; region: RegionDecision }
  | { kind: 'rejected'; index: number; url: string | null; reason: Reason; detail: string; territory: string | null };

/** Rows buffered before one catalog insert. */
const CATALOG_BATCH = 500;

function sampleKey(index: number): string {
  return String(index).padStart(9, '0');
}

function newRunId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `run-${stamp}-${randomBytes(3).toString('hex')}`;
}

function urlOf(record: SourceRecord, urlColumn: string): string | null {
  const value = record.record?.[urlColumn];
  return typeof value === 'string' ? value : null;
}

/**
 * Processes one input row up to the point where order matters: parse, region check on
 * declared location (before any download), fetch, decode, region check with EXIF GPS.
 */
async function processRecord(
  record: SourceRecord,
  context: {
    options: IngestOptions;
    policy: RegionPolicy;
    fetcher: Fetcher;
    fetchLimit: LimitFunction;
    decodeLimit: LimitFunction;
    allowFileUrls: boolean;
    logger: Logger;
  },
): Promise<RowOutcome> {
  const { options, policy } = context;
  const url = urlOf(record, options.urlColumn);
  let territory: string | null = null;

  try {
    if (record.error !== undefined) throw new RejectionError('invalid_row', record.error);
    const row = toInputRow(record.index, record.record, options, { allowFileUrls: context.allowFileUrls });

    // Declared evidence alone can exclude a row, and then the image is never downloaded.
    const declared = decideRegion(policy, { declaredCoordinates: row.declaredCoordinates, declaredCountry: row.declaredCountry });
    if (declared.verdict === 'excluded') {
      territory = declared.territory;
      throw new RejectionError('excluded_territory', describeExclusion(declared));
    }

    const fetched = await context.fetchLimit(() => context.fetcher.fetch(row.url));
    const image = await context.decodeLimit(() => decodeImage(fetched.body, options));

    const region = decideRegion(policy, { gps: image.gps, declaredCoordinates: row.declaredCoordinates, declaredCountry: row.declaredCountry });
    territory = region.territory;
    if (region.verdict === 'excluded') throw new RejectionError('excluded_territory', describeExclusion(region));
    if (region.verdict === 'unknown' && options.unknownLocation === 'reject') {
      throw new RejectionError('unknown_location', describeUnknown(region));
    }
    return { kind: 'ok', index: record.index, row, image, region };
  } catch (error) {
    if (error instanceof RejectionError) {
      return { kind: 'rejected', index: record.index, url, reason: error.reason, detail: error.message, territory };
    }
    context.logger.error({ err: error, row: record.index, url }, 'unexpected error while processing a row');
    return { kind: 'rejected', index: record.index, url, reason: 'internal_error', detail: (error as Error)?.message ?? String(error), territory };
  }
}

function describeExclusion(decision: RegionDecision): string {
  const evidence = decision.evidence.find((item) => item.excluded)!;
  const where = evidence.latitude !== undefined ? ` at ${evidence.latitude.toFixed(5)},${evidence.longitude!.toFixed(5)}` : ` (declared ${evidence.declared})`;
  return `${evidence.source}${where} is in ${evidence.territory}, which the policy excludes`;
}

function describeUnknown(decision: RegionDecision): string {
  if (decision.evidence.length === 0) return 'no EXIF GPS, declared coordinates or declared country';
  return `no territory found for ${decision.evidence.map((item) => item.source).join(', ')}`;
}

function sampleJson(key: string, outcome: Extract<RowOutcome, { kind: 'ok' }>): Record<string, unknown> {
  const { row, image, region } = outcome;
  return {
    ...row.extra,
    key,
    url: row.url,
    caption: row.caption,
    width: image.width,
    height: image.height,
    original_width: image.originalWidth,
    original_height: image.originalHeight,
    source_format: image.sourceFormat,
    format: image.extension,
    territory: region.territory,
    location_source: region.source,
    location_evidence: region.evidence,
    sha256: image.sha256,
    phash: hashToHex(image.phash),
  };
}

/**
 * Runs one ingestion: reads the source, processes rows in parallel, and decides dedup,
 * shard placement and status in input order. Every input row ends as exactly one status
 * line, so input rows always equal ok plus rejected.
 */
export async function ingest(options: IngestOptions, hooks: IngestHooks = {}): Promise<RunSummary> {
  const logger = hooks.logger ?? defaultLogger;
  const policy = parsePolicy(options.policy);
  const runId = newRunId();
  const startedAt = new Date();
  const output = path.resolve(options.output);
  const format = options.inputFormat === 'auto' ? await detectFormat(options.source) : options.inputFormat;

  await mkdir(path.join(output, 'status'), { recursive: true });
  const catalogDir = path.join(output, 'catalog');
  const catalog = new CatalogStore(await openCatalogClient(options.catalog, options.catalog ? undefined : catalogDir));
  await catalog.startRun({ id: runId, source: options.source, output, policy: policy.name, options });
  logger.info({ run: runId, source: options.source, format, output, policy: policy.name, catalog: catalog.client.kind }, 'ingest started');

  const fetcher = new Fetcher(options, { lookup: hooks.lookup });
  const writer = new ShardWriter({
    folder: output,
    prefix: options.shardPrefix,
    shardSize: options.shardSize,
    onShard: async (shard) => {
      // Samples of a shard reach the catalog before the shard row that publishes them.
      await flushCatalog();
      await catalog.addShard(runId, shard);
      logger.info({ run: runId, shard: shard.name, samples: shard.samples, bytes: shard.bytes }, 'shard written');
    },
  });
  const statusPath = path.join(output, 'status', `${options.shardPrefix}-status-000000.jsonl`);
  const status: WriteStream = createWriteStream(statusPath);
  const dedup = new DedupIndex(options.dedup, options.nearRadius);
  const progress = createProgress(options.progress, logger);

  const counts = { rows: 0, ok: 0, rejected: 0 };
  const reasons: Record<string, number> = {};
  let sampleBatch: SampleRow[] = [];
  let rejectionBatch: RejectionRow[] = [];

  async function flushCatalog(): Promise<void> {
    const samples = sampleBatch;
    const rejections = rejectionBatch;
    sampleBatch = [];
    rejectionBatch = [];
    await catalog.addSamples(runId, samples);
    await catalog.addRejections(runId, rejections);
  }

  function writeStatus(line: StatusLine): Promise<void> | void {
    if (!status.write(`${JSON.stringify(line)}\n`)) return new Promise((resolve) => status.once('drain', resolve));
  }

  async function reject(index: number, url: string | null, reason: Reason, detail: string, territory: string | null, duplicateOf: string | null = null) {
    counts.rejected += 1;
    reasons[reason] = (reasons[reason] ?? 0) + 1;
    rejectionBatch.push({ rowIndex: index, url, reason, detail, territory, duplicateOf });
    await writeStatus({ row: index, url, status: 'rejected', reason, detail, key: null, shard: null, territory, location_source: null, duplicate_of: duplicateOf });
  }

  async function keep(outcome: Extract<RowOutcome, { kind: 'ok' }>): Promise<void> {
    const { image, region, row } = outcome;
    const duplicate = dedup.check(image.sha256, image.phash);
    if (duplicate) {
      const reason = duplicate.kind === 'exact' ? 'duplicate_exact' : 'duplicate_near';
      const detail = duplicate.kind === 'exact' ? `same pixels as ${duplicate.keptKey}` : `Hamming distance ${duplicate.distance} to ${duplicate.keptKey}`;
      await reject(outcome.index, row.url, reason, detail, region.territory, duplicate.keptKey);
      return;
    }

    const key = sampleKey(outcome.index);
    const files: Record<string, Buffer> = {
      [image.extension]: image.data,
      json: Buffer.from(JSON.stringify(sampleJson(key, outcome))),
    };
    if (row.caption !== null) files.txt = Buffer.from(row.caption);
    const shard = await writer.write({ key, files });
    dedup.add(key, image.sha256, image.phash);

    counts.ok += 1;
    sampleBatch.push({
      key,
      rowIndex: outcome.index,
      url: row.url,
      shard,
      sha256: image.sha256,
      phash: hashToHex(image.phash),
      territory: region.territory,
      locationSource: region.source,
      width: image.width,
      height: image.height,
      originalWidth: image.originalWidth,
      originalHeight: image.originalHeight,
      sourceFormat: image.sourceFormat,
      caption: row.caption,
    });
    await writeStatus({ row: outcome.index, url: row.url, status: 'ok', reason: null, detail: null, key, shard, territory: region.territory, location_source: region.source, duplicate_of: null });
  }

  const context = {
    options,
    policy,
    fetcher,
    // Bounds requests in flight; per-host limits apply inside the fetcher.
    fetchLimit: pLimit(options.concurrency),
    // Bounds decoded images in memory: a decoded photo can take hundreds of megabytes.
    decodeLimit: pLimit(options.decodeConcurrency || os.availableParallelism()),
    allowFileUrls: format === 'folder',
    logger,
  };

  try {
    // A window of four times the request concurrency keeps requests flowing while a slow row waits at the head.
    const outcomes = orderedMap(readSource(options.source, format), options.concurrency * 4, (record) => processRecord(record, context));
    for await (const outcome of outcomes) {
      counts.rows += 1;
      if (outcome.kind === 'ok') await keep(outcome);
      else await reject(outcome.index, outcome.url, outcome.reason, outcome.detail, outcome.territory);
      if (sampleBatch.length + rejectionBatch.length >= CATALOG_BATCH) await flushCatalog();
      progress.update(counts);
    }
    await writer.close();
    await flushCatalog();
  } catch (error) {
    await writer.abort();
    throw error;
  } finally {
    progress.stop();
    status.end();
    await finished(status).catch(() => undefined);
    await fetcher.close();
  }

  const shards = writer.shards;
  if (shards.length > 0) await writeWidsIndex(output, options.shardPrefix, shards);
  await catalog.finishRun(runId, { inputRows: counts.rows, ok: counts.ok, rejected: counts.rejected, reasons });
  await catalog.client.close();

  const finishedAt = new Date();
  const summary: RunSummary = {
    run_id: runId,
    source: options.source,
    output,
    policy: policy.name,
    started_at: startedAt.toISOString(),
    finished_at: finishedAt.toISOString(),
    duration_s: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    input_rows: counts.rows,
    ok: counts.ok,
    rejected: counts.rejected,
    reasons,
    shards: shards.map((shard) => `${shard.name}.tar`),
    catalog: options.catalog ? 'postgres' : catalogDir,
  };
  await writeFile(path.join(output, 'run.json'), `${JSON.stringify(summary, null, 2)}\n`);
  logger.info({ run: runId, rows: counts.rows, ok: counts.ok, rejected: counts.rejected, reasons, shards: shards.length }, 'ingest finished');
  return summary;
}
