import type { SqlClient } from '../catalog/catalog.js';
import { neighbours, type DedupMode, type Deduplicator, type DuplicateMatch } from './index.js';
import type { Hash64 } from './phash.js';

/** Bits of the three indexed chunks, most significant first. */
const CHUNK_WIDTHS = [22, 21, 21] as const;

/** Splits a hash into the three chunks of CHUNK_WIDTHS. */
function chunksOf(hash: Hash64): number[] {
  const value = (BigInt(hash.high) << 32n) | BigInt(hash.low);
  return [Number(value >> 42n), Number((value >> 21n) & 0x1fffffn), Number(value & 0x1fffffn)];
}

/** Writes a hash as the decimal text of a signed 64-bit integer, PostgreSQL's bigint. */
function toSignedBigint(hash: Hash64): string {
  return BigInt.asIntN(64, (BigInt(hash.high) << 32n) | BigInt(hash.low)).toString();
}

/** Derives a 64-bit advisory lock key from a scope name (FNV-1a over its UTF-16 units). */
function lockKey(scope: string): bigint {
  let hash = 0xcbf29ce484222325n;
  for (let i = 0; i < scope.length; i += 1) {
    hash ^= BigInt(scope.charCodeAt(i));
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return BigInt.asIntN(64, hash);
}

/**
 * The dedup index shared by every worker of a run, in PostgreSQL. Each claim runs in one
 * transaction under an advisory lock per scope, so two workers that meet copies of one
 * image at the same moment keep exactly one of them. A key that claims again (a replayed
 * unit) finds its own rows and is not its own duplicate.
 *
 * NOTE: the lock serialises the claims of one run. Each claim is three short statements,
 * so the ceiling is a few hundred claims per second per run on a local server (estimate).
 */
export class PostgresDeduplicator implements Deduplicator {
  readonly #lock: string;

  constructor(
    readonly client: SqlClient,
    readonly scope: string,
    readonly mode: DedupMode,
    readonly radius: number,
  ) {
    this.#lock = lockKey(scope).toString();
  }

  async claim(key: string, sha256: string, phash: Hash64): Promise<DuplicateMatch | null> {
    if (this.mode === 'none') return null;
    return this.client.transaction(async (tx) => {
      await tx.query('select pg_advisory_xact_lock($1::bigint)', [this.#lock]);

      const exact = await tx.query<{ key: string }>('select key from dedup_exact where scope = $1 and sha256 = $2', [this.scope, sha256]);
      const exactKey = exact.rows[0]?.key;
      if (exactKey !== undefined && exactKey !== key) return { kind: 'exact', keptKey: exactKey, distance: 0 };

      if (this.mode === 'exact_and_near') {
        const near = await this.#findNear(tx, key, phash);
        if (near) return near;
      }

      await tx.query('insert into dedup_exact (scope, sha256, key) values ($1, $2, $3) on conflict do nothing', [this.scope, sha256, key]);
      if (this.mode === 'exact_and_near') {
        const [c0, c1, c2] = chunksOf(phash);
        await tx.query('insert into dedup_near (scope, key, phash, c0, c1, c2) values ($1, $2, $3, $4, $5, $6) on conflict do nothing', [
          this.scope,
          key,
          toSignedBigint(phash),
          c0,
          c1,
          c2,
        ]);
      }
      return null;
    });
  }

  async #findNear(tx: Pick<SqlClient, 'query'>, key: string, phash: Hash64): Promise<DuplicateMatch | null> {
    // Pigeonhole: a hash within the radius is within radius / 3 bits on one of the three chunks.
    const chunkRadius = Math.floor(this.radius / CHUNK_WIDTHS.length);
    const probes = chunksOf(phash).map((chunk, index) => neighbours(chunk, CHUNK_WIDTHS[index]!, chunkRadius));
    // The database filters the candidates by distance, so only the best match travels back.
    const nearest = await tx.query<{ key: string; distance: number }>(
      `select key, bit_count((phash # $6::bigint)::bit(64))::int as distance from dedup_near
       where scope = $1 and key <> $2
         and (c0 = any($3::int[]) or c1 = any($4::int[]) or c2 = any($5::int[]))
         and bit_count((phash # $6::bigint)::bit(64)) <= $7
       order by distance, key
       limit 1`,
      [this.scope, key, ...probes, toSignedBigint(phash), this.radius],
    );
    const row = nearest.rows[0];
    return row ? { kind: 'near', keptKey: row.key, distance: Number(row.distance) } : null;
  }

  async close(): Promise<void> {}
}
