import type { ShardInfo } from '../webdataset/writer.js';
import type { SqlClient } from './catalog.js';

export interface SampleRow {
  key: string;
  rowIndex: number;
  url: string;
  shard: string;
  sha256: string;
  phash: string;
  territory: string | null;
  locationSource: string | null;
  width: number;
  height: number;
  originalWidth: number;
  originalHeight: number;
  sourceFormat: string;
  caption: string | null;
}

export interface RejectionRow {
  rowIndex: number;
  url: string | null;
  reason: string;
  detail: string | null;
  territory: string | null;
  duplicateOf: string | null;
}

export interface RunTotals {
  inputRows: number;
  ok: number;
  rejected: number;
  reasons: Record<string, number>;
}

/**
 * Writes a run's records to the catalog. Rows are inserted in batches through unnest(),
 * one statement per batch, and inserting a row twice is a no-op, so a replayed unit
 * leaves the same rows.
 */
export class CatalogStore {
  constructor(readonly client: SqlClient) {}

  async startRun(run: { id: string; source: string; output: string; policy: string; options: unknown }): Promise<void> {
    await this.client.query(
      `insert into runs (id, source, output, policy, options) values ($1, $2, $3, $4, $5)
       on conflict (id) do nothing`,
      [run.id, run.source, run.output, run.policy, JSON.stringify(run.options)],
    );
  }

  async addSamples(runId: string, rows: readonly SampleRow[]): Promise<void> {
    if (rows.length === 0) return;
    await this.client.query(
      `insert into samples (run_id, key, row_index, url, shard, sha256, phash, territory, location_source,
                            width, height, original_width, original_height, source_format, caption)
       select $1, * from unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                                $9::text[], $10::int[], $11::int[], $12::int[], $13::int[], $14::text[], $15::text[])
       on conflict do nothing`,
      [
        runId,
        rows.map((row) => row.key),
        rows.map((row) => row.rowIndex),
        rows.map((row) => row.url),
        rows.map((row) => row.shard),
        rows.map((row) => row.sha256),
        rows.map((row) => row.phash),
        rows.map((row) => row.territory),
        rows.map((row) => row.locationSource),
        rows.map((row) => row.width),
        rows.map((row) => row.height),
        rows.map((row) => row.originalWidth),
        rows.map((row) => row.originalHeight),
        rows.map((row) => row.sourceFormat),
        rows.map((row) => row.caption),
      ],
    );
  }

  async addRejections(runId: string, rows: readonly RejectionRow[]): Promise<void> {
    if (rows.length === 0) return;
    await this.client.query(
      `insert into rejections (run_id, row_index, url, reason, detail, territory, duplicate_of)
       select $1, * from unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
       on conflict do nothing`,
      [
        runId,
        rows.map((row) => row.rowIndex),
        rows.map((row) => row.url),
        rows.map((row) => row.reason),
        rows.map((row) => row.detail),
        rows.map((row) => row.territory),
        rows.map((row) => row.duplicateOf),
      ],
    );
  }

  async addShard(runId: string, shard: ShardInfo): Promise<void> {
    await this.client.query(
      `insert into shards (run_id, name, samples, bytes, md5, first_key, last_key) values ($1, $2, $3, $4, $5, $6, $7)
       on conflict do nothing`,
      [runId, shard.name, shard.samples, shard.bytes, shard.md5, shard.firstKey, shard.lastKey],
    );
  }

  async finishRun(runId: string, totals: RunTotals): Promise<void> {
    await this.client.query(
      `update runs set finished_at = now(), input_rows = $2, ok = $3, rejected = $4, reasons = $5 where id = $1`,
      [runId, totals.inputRows, totals.ok, totals.rejected, JSON.stringify(totals.reasons)],
    );
  }
}
