import type { LimitFunction } from 'p-limit';
import type { CatalogStore, RejectionRow, SampleRow } from '../catalog/store.js';
import type { IngestOptions } from '../config/options.js';
import { decodeImage, type DecodedImage } from '../decode/image.js';
import type { Deduplicator } from '../dedup/index.js';
import { hashToHex } from '../dedup/phash.js';
import type { Fetcher } from '../fetch/fetcher.js';
import { decideRegion, type LocationEvidence, type RegionDecision, type RegionPolicy } from '../geo/policy.js';
import type { Logger } from '../log.js';
import type { SourceRecord } from '../sources/read.js';
import { toInputRow, type InputRow } from '../sources/row.js';
import type { Storage } from '../storage/storage.js';
import { ShardWriter, type ShardInfo } from '../webdataset/writer.js';
import { orderedMap } from './ordered.js';
import { RejectionError, type Reason } from './reasons.js';

/** One line of a status file: the outcome of one input row. */
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
  /** Every piece of location evidence the decision rested on: source, coordinates or declared code, territory. */
  location_evidence: LocationEvidence[] | null;
  duplicate_of: string | null;
}

/** Options, clients and limits shared by every part of a run. */
export interface RunContext {
  runId: string;
  options: IngestOptions;
  policy: RegionPolicy;
  storage: Storage;
  catalog: CatalogStore;
  dedup: Deduplicator;
  fetcher: Fetcher;
  /** Bounds requests in flight; per-host limits apply inside the fetcher. */
  fetchLimit: LimitFunction;
  /** Bounds decoded images in memory: a decoded photo can take hundreds of megabytes. */
  decodeLimit: LimitFunction;
  logger: Logger;
}

/** A slice of a run written as its own shards and status file. */
export interface PartSpec {
  /** Index of the first shard, which names it: PREFIX-{firstShard}.tar. */
  firstShard: number;
  shardSize: number;
  statusName: string;
  onProgress?: (counts: PartCounts) => void;
  /** Called with each status line as it is written. */
  onStatus?: (line: StatusLine) => void;
  /** Called after each row; a worker uses it to keep its group membership alive. */
  onRow?: () => Promise<void> | void;
}

export interface PartCounts {
  rows: number;
  ok: number;
  rejected: number;
}

export interface PartResult extends PartCounts {
  reasons: Record<string, number>;
  shards: ShardInfo[];
}

type RowOutcome =
  | { kind: 'ok'; index: number; row: InputRow; image: DecodedImage; region: RegionDecision }
  | { kind: 'rejected'; index: number; url: string | null; reason: Reason; detail: string; region: RegionDecision | null };

/** Rows buffered before one catalog insert. */
const CATALOG_BATCH = 500;

/** Names a sample by its input row, so a replayed row gets the same key. */
export function sampleKey(index: number): string {
  return String(index).padStart(9, '0');
}

function urlOf(record: SourceRecord, urlColumn: string): string | null {
  const value = record.record?.[urlColumn];
  return typeof value === 'string' ? value : null;
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

/**
 * Processes one input row up to the point where order matters: parse, region check on
 * declared location (before any download), fetch, decode, region check with EXIF GPS.
 */
async function processRecord(record: SourceRecord, context: RunContext): Promise<RowOutcome> {
  const { options, policy } = context;
  const url = urlOf(record, options.urlColumn);
  let region: RegionDecision | null = null;

  try {
    if (record.error !== undefined) throw new RejectionError('invalid_row', record.error);
    const row = toInputRow(record.index, record.record, options, { listed: record.listed === true });

    // Declared evidence alone can exclude a row, and then the image is never downloaded.
    const declared = decideRegion(policy, { declaredCoordinates: row.declaredCoordinates, declaredCountry: row.declaredCountry });
    if (declared.verdict === 'excluded') {
      region = declared;
      throw new RejectionError('excluded_territory', describeExclusion(declared));
    }

    const fetched = await context.fetchLimit(() => context.fetcher.fetch(row.url));
    const image = await context.decodeLimit(() => decodeImage(fetched.body, options));

    const decision = decideRegion(policy, { gps: image.gps, declaredCoordinates: row.declaredCoordinates, declaredCountry: row.declaredCountry });
    region = decision;
    if (decision.verdict === 'excluded') throw new RejectionError('excluded_territory', describeExclusion(decision));
    if (decision.verdict === 'unknown' && options.unknownLocation === 'reject') {
      throw new RejectionError('unknown_location', describeUnknown(decision));
    }
    return { kind: 'ok', index: record.index, row, image, region: decision };
  } catch (error) {
    if (error instanceof RejectionError) {
      return { kind: 'rejected', index: record.index, url, reason: error.reason, detail: error.message, region };
    }
    context.logger.error({ err: error, run: context.runId, row: record.index, url }, 'unexpected error while processing a row');
    return { kind: 'rejected', index: record.index, url, reason: 'internal_error', detail: (error as Error)?.message ?? String(error), region };
  }
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
 * Processes the records of one part: rows run in parallel up to decoding, then dedup,
 * shard placement, status and catalog rows are decided in input order. Every record ends
 * as exactly one status line. Shards and the status file are published only when
 * complete; on failure nothing of the part is published.
 */
export async function processPart(records: AsyncIterable<SourceRecord>, context: RunContext, part: PartSpec): Promise<PartResult> {
  const { runId, options, catalog } = context;
  const counts: PartCounts = { rows: 0, ok: 0, rejected: 0 };
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

  const writer = new ShardWriter({
    storage: context.storage,
    prefix: options.shardPrefix,
    shardSize: part.shardSize,
    firstIndex: part.firstShard,
    onShard: async (shard) => {
      // Samples of a shard reach the catalog before the shard row that announces it.
      await flushCatalog();
      await catalog.addShard(runId, shard);
      context.logger.info({ run: runId, shard: shard.name, samples: shard.samples, bytes: shard.bytes }, 'shard written');
    },
  });
  const status = await context.storage.createObject(`status/${part.statusName}`);

  function writeStatus(line: StatusLine): Promise<void> | void {
    part.onStatus?.(line);
    if (!status.stream.write(`${JSON.stringify(line)}\n`)) return new Promise((resolve) => status.stream.once('drain', resolve));
  }

  async function reject(index: number, url: string | null, reason: Reason, detail: string, region: RegionDecision | null, duplicateOf: string | null = null) {
    counts.rejected += 1;
    reasons[reason] = (reasons[reason] ?? 0) + 1;
    const territory = region?.territory ?? null;
    rejectionBatch.push({ rowIndex: index, url, reason, detail, territory, duplicateOf });
    await writeStatus({
      row: index,
      url,
      status: 'rejected',
      reason,
      detail,
      key: null,
      shard: null,
      territory,
      location_source: region?.source ?? null,
      location_evidence: region?.evidence ?? null,
      duplicate_of: duplicateOf,
    });
  }

  async function keep(outcome: Extract<RowOutcome, { kind: 'ok' }>): Promise<void> {
    const { image, region, row } = outcome;
    const key = sampleKey(outcome.index);
    const duplicate = await context.dedup.claim(key, image.sha256, image.phash);
    if (duplicate) {
      const reason = duplicate.kind === 'exact' ? 'duplicate_exact' : 'duplicate_near';
      const detail = duplicate.kind === 'exact' ? `same pixels as ${duplicate.keptKey}` : `Hamming distance ${duplicate.distance} to ${duplicate.keptKey}`;
      await reject(outcome.index, row.url, reason, detail, region, duplicate.keptKey);
      return;
    }

    const files: Record<string, Buffer> = {
      [image.extension]: image.data,
      json: Buffer.from(JSON.stringify(sampleJson(key, outcome))),
    };
    if (row.caption !== null) files.txt = Buffer.from(row.caption);
    const shard = await writer.write({ key, files });

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
    await writeStatus({
      row: outcome.index,
      url: row.url,
      status: 'ok',
      reason: null,
      detail: null,
      key,
      shard,
      territory: region.territory,
      location_source: region.source,
      location_evidence: region.evidence,
      duplicate_of: null,
    });
  }

  try {
    // A window of four times the request concurrency keeps requests flowing while a slow row waits at the head.
    const outcomes = orderedMap(records, options.concurrency * 4, (record) => processRecord(record, context));
    for await (const outcome of outcomes) {
      counts.rows += 1;
      if (outcome.kind === 'ok') await keep(outcome);
      else await reject(outcome.index, outcome.url, outcome.reason, outcome.detail, outcome.region);
      if (sampleBatch.length + rejectionBatch.length >= CATALOG_BATCH) await flushCatalog();
      part.onProgress?.(counts);
      await part.onRow?.();
    }
    await writer.close();
    await flushCatalog();
    await status.commit();
  } catch (error) {
    await writer.abort();
    await status.abort();
    throw error;
  }

  return { ...counts, reasons, shards: [...writer.shards] };
}
