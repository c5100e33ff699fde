import type { SqlClient } from '../catalog/catalog.js';
import { CHUNK_BITS, CHUNKS, hashChunks, neighbours, type DedupMode, type Deduplicator, type DuplicateMatch } from './index.js';
import { hammingDistance, hashToHex, hexToHash, type Hash64 } from './phash.js';

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
        const [c0, c1, c2, c3] = hashChunks(phash);
        await tx.query(
          'insert into dedup_near (scope, key, phash, c0, c1, c2, c3) values ($1, $2, $3, $4, $5, $6, $7) on conflict do nothing',
          [this.scope, key, hashToHex(phash), c0, c1, c2, c3],
        );
      }
      return null;
    });
  }

  async #findNear(tx: Pick<SqlClient, 'query'>, key: string, phash: Hash64): Promise<DuplicateMatch | null> {
    // Pigeonhole: a hash within the radius is within radius / 4 bits on one of the four chunks.
    const chunkRadius = Math.floor(this.radius / CHUNKS);
    const probes = hashChunks(phash).map((chunk) => neighbours(chunk, CHUNK_BITS, chunkRadius));
    const candidates = await tx.query<{ key: string; phash: string }>(
      `select key, phash from dedup_near
       where scope = $1 and key <> $2
         and (c0 = any($3::int[]) or c1 = any($4::int[]) or c2 = any($5::int[]) or c3 = any($6::int[]))`,
      [this.scope, key, ...probes],
    );

    let best: DuplicateMatch | null = null;
    for (const row of candidates.rows) {
      const distance = hammingDistance(phash, hexToHash(row.phash));
      if (distance > this.radius) continue;
      if (!best || distance < best.distance || (distance === best.distance && row.key < best.keptKey)) {
        best = { kind: 'near', keptKey: row.key, distance };
      }
    }
    return best;
  }

  async close(): Promise<void> {}
}
