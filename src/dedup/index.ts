import { hammingDistance, type Hash64 } from './phash.js';

export type DedupMode = 'exact_and_near' | 'exact' | 'none';

export interface DuplicateMatch {
  kind: 'exact' | 'near';
  /** Key of the kept sample this one duplicates. */
  keptKey: string;
  distance: number;
}

/** Chunks the 64 bits are split into: 16 bits each, so a bucket contains about N / 65536 hashes. */
export const CHUNKS = 4;
export const CHUNK_BITS = 64 / CHUNKS;

/** Lists every value within Hamming distance `radius` of `value`, over `bits` bits. */
export function neighbours(value: number, bits: number, radius: number): number[] {
  const found = [value];
  let frontier = [{ value, lowestBit: 0 }];
  for (let distance = 1; distance <= radius; distance += 1) {
    const next: { value: number; lowestBit: number }[] = [];
    for (const item of frontier) {
      for (let bit = item.lowestBit; bit < bits; bit += 1) {
        const flipped = item.value ^ (1 << bit);
        found.push(flipped);
        next.push({ value: flipped, lowestBit: bit + 1 });
      }
    }
    frontier = next;
  }
  return found;
}

/** Splits a hash into its four 16-bit chunks, most significant first. */
export function hashChunks(hash: Hash64): number[] {
  return [hash.high >>> 16, hash.high & 0xffff, hash.low >>> 16, hash.low & 0xffff];
}

/**
 * Near-duplicate index by multi-index hashing (Norouzi, Punjani and Fleet, 2012). The
 * 64 bits are split into 4 chunks of 16 bits. By the pigeonhole principle, two hashes
 * within radius r differ in at most floor(r / 4) bits on at least one chunk, so a lookup
 * reads the buckets of those chunk values instead of every stored hash.
 */
export class NearIndex {
  readonly radius: number;
  readonly #chunkRadius: number;
  readonly #tables: Map<number, number[]>[] = Array.from({ length: CHUNKS }, () => new Map());
  readonly #hashes: Hash64[] = [];
  readonly #keys: string[] = [];

  constructor(radius: number) {
    if (!Number.isInteger(radius) || radius < 0 || radius > 32) {
      throw new RangeError(`Expected an integer from 0 to 32 for the near-duplicate radius but received ${radius}`);
    }
    this.radius = radius;
    this.#chunkRadius = Math.floor(radius / CHUNKS);
  }

  get size(): number {
    return this.#hashes.length;
  }

  #chunks(hash: Hash64): number[] {
    return hashChunks(hash);
  }

  /** Returns the closest stored hash within the radius (the earliest on ties), or null. */
  find(hash: Hash64): { key: string; distance: number } | null {
    let best: { id: number; distance: number } | null = null;
    const seen = new Set<number>();
    this.#chunks(hash).forEach((chunk, table) => {
      for (const probe of neighbours(chunk, CHUNK_BITS, this.#chunkRadius)) {
        for (const id of this.#tables[table]!.get(probe) ?? []) {
          if (seen.has(id)) continue;
          seen.add(id);
          const distance = hammingDistance(hash, this.#hashes[id]!);
          if (distance > this.radius) continue;
          if (!best || distance < best.distance || (distance === best.distance && id < best.id)) best = { id, distance };
        }
      }
    });
    const found = best as { id: number; distance: number } | null;
    return found ? { key: this.#keys[found.id]!, distance: found.distance } : null;
  }

  add(key: string, hash: Hash64): void {
    const id = this.#hashes.length;
    this.#hashes.push(hash);
    this.#keys.push(key);
    this.#chunks(hash).forEach((chunk, table) => {
      const bucket = this.#tables[table]!.get(chunk);
      if (bucket) bucket.push(id);
      else this.#tables[table]!.set(chunk, [id]);
    });
  }
}

/** In-process duplicate index: exact by pixel SHA-256, near by perceptual hash. */
export class DedupIndex {
  readonly mode: DedupMode;
  readonly #exact = new Map<string, string>();
  readonly #near: NearIndex;

  constructor(mode: DedupMode, radius: number) {
    this.mode = mode;
    this.#near = new NearIndex(radius);
  }

  /** Returns the kept sample this one duplicates, or null when it is new. */
  check(sha256: string, phash: Hash64): DuplicateMatch | null {
    if (this.mode === 'none') return null;
    const exact = this.#exact.get(sha256);
    if (exact !== undefined) return { kind: 'exact', keptKey: exact, distance: 0 };
    if (this.mode !== 'exact_and_near') return null;
    const near = this.#near.find(phash);
    return near ? { kind: 'near', keptKey: near.key, distance: near.distance } : null;
  }

  add(key: string, sha256: string, phash: Hash64): void {
    if (this.mode === 'none') return;
    this.#exact.set(sha256, key);
    if (this.mode === 'exact_and_near') this.#near.add(key, phash);
  }
}

/**
 * Decides whether a sample duplicates a kept one and, when it does not, records it as
 * kept, in one step, so that two callers cannot both keep the same image.
 */
export interface Deduplicator {
  claim(key: string, sha256: string, phash: Hash64): Promise<DuplicateMatch | null>;
  close(): Promise<void>;
}

/** The in-process deduplicator of a single run. */
export class MemoryDeduplicator implements Deduplicator {
  readonly #index: DedupIndex;

  constructor(mode: DedupMode, radius: number) {
    this.#index = new DedupIndex(mode, radius);
  }

  async claim(key: string, sha256: string, phash: Hash64): Promise<DuplicateMatch | null> {
    const match = this.#index.check(sha256, phash);
    if (!match) this.#index.add(key, sha256, phash);
    return match;
  }

  async close(): Promise<void> {}
}
