import { createHash } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import type { PendingObject, Storage } from '../storage/storage.js';

/** One WebDataset sample: files keyed by extension, written as `{key}.{extension}`. */
export interface ShardSample {
  key: string;
  files: Record<string, Buffer>;
}

export interface ShardInfo {
  name: string;
  /** Object path relative to the storage root. */
  path: string;
  samples: number;
  bytes: number;
  md5: string;
  firstKey: string;
  lastKey: string;
}

/** Fixed modification time, so the same samples always give the same tar bytes. */
const FIXED_MTIME = new Date(0);

/**
 * Checks a WebDataset key. Readers split member names at the first dot of the base
 * name, so a key with a dot would change the extension a reader derives.
 */
export function assertValidKey(key: string): void {
  if (!/^[A-Za-z0-9_-]+$/.test(key)) throw new Error(`Invalid sample key "${key}": use letters, digits, - and _ only (no dots, no slashes)`);
}

export function shardName(prefix: string, index: number): string {
  return `${prefix}-${String(index).padStart(6, '0')}`;
}

class OpenShard {
  readonly #pack = tar.pack();
  readonly #md5 = createHash('md5');
  readonly #done: Promise<void>;
  bytes = 0;
  samples = 0;
  firstKey = '';
  lastKey = '';

  constructor(readonly name: string, readonly target: PendingObject) {
    const tap = new PassThrough();
    tap.on('data', (chunk: Buffer) => {
      this.#md5.update(chunk);
      this.bytes += chunk.length;
    });
    this.#done = pipeline(this.#pack, tap, target.stream);
    this.#done.catch(() => undefined);
  }

  async add(sample: ShardSample): Promise<void> {
    // Members of one sample stay adjacent and sorted, so readers group them and the
    // bytes do not depend on the order the files were produced in.
    for (const extension of Object.keys(sample.files).sort()) {
      const data = sample.files[extension]!;
      await new Promise<void>((resolve, reject) => {
        this.#pack.entry(
          { name: `${sample.key}.${extension}`, size: data.length, mtime: FIXED_MTIME, mode: 0o644, uid: 0, gid: 0, uname: '', gname: '' },
          data,
          (error) => (error ? reject(error) : resolve()),
        );
      });
    }
    if (this.samples === 0) this.firstKey = sample.key;
    this.lastKey = sample.key;
    this.samples += 1;
  }

  /** Ends the tar and publishes it under its final name. */
  async finish(): Promise<string> {
    this.#pack.finalize();
    await this.#done;
    await this.target.commit();
    return this.#md5.digest('hex');
  }

  async abort(): Promise<void> {
    this.#pack.destroy();
    await this.#done.catch(() => undefined);
    await this.target.abort();
  }
}

/**
 * Writes samples into tar shards of at most `shardSize` samples, named
 * `{prefix}-{000000}.tar`, through storage that publishes an object only when it is
 * complete, so a reader never sees half a shard. A `.stats.json` lies beside each shard.
 */
export class ShardWriter {
  readonly #storage: Storage;
  readonly #prefix: string;
  readonly #shardSize: number;
  readonly #onShard: ((info: ShardInfo) => Promise<void> | void) | undefined;
  readonly #written: ShardInfo[] = [];
  #open: OpenShard | null = null;
  #nextIndex: number;

  constructor(options: {
    storage: Storage;
    prefix: string;
    shardSize: number;
    firstIndex?: number;
    onShard?: (info: ShardInfo) => Promise<void> | void;
  }) {
    this.#storage = options.storage;
    this.#prefix = options.prefix;
    this.#shardSize = options.shardSize;
    this.#nextIndex = options.firstIndex ?? 0;
    this.#onShard = options.onShard;
  }

  get shards(): readonly ShardInfo[] {
    return this.#written;
  }

  /** Name of the shard the next sample goes into. */
  get currentShardName(): string {
    return this.#open?.name ?? shardName(this.#prefix, this.#nextIndex);
  }

  async write(sample: ShardSample): Promise<string> {
    assertValidKey(sample.key);
    if (!this.#open) {
      const name = shardName(this.#prefix, this.#nextIndex);
      this.#nextIndex += 1;
      this.#open = new OpenShard(name, await this.#storage.createObject(`${name}.tar`));
    }
    const shard = this.#open;
    await shard.add(sample);
    if (shard.samples >= this.#shardSize) await this.#closeOpen();
    return shard.name;
  }

  async #closeOpen(): Promise<void> {
    const shard = this.#open;
    if (!shard) return;
    this.#open = null;

    const md5 = await shard.finish();
    const info: ShardInfo = {
      name: shard.name,
      path: `${shard.name}.tar`,
      samples: shard.samples,
      bytes: shard.bytes,
      md5,
      firstKey: shard.firstKey,
      lastKey: shard.lastKey,
    };
    const stats = { shard: `${shard.name}.tar`, samples: info.samples, bytes: info.bytes, md5, first_key: info.firstKey, last_key: info.lastKey };
    await this.#storage.writeObject(`${shard.name}.stats.json`, `${JSON.stringify(stats, null, 2)}\n`);
    this.#written.push(info);
    await this.#onShard?.(info);
  }

  /** Completes the open shard, if any, and returns every shard written. */
  async close(): Promise<ShardInfo[]> {
    await this.#closeOpen();
    return [...this.#written];
  }

  /** Drops the open shard without publishing it. */
  async abort(): Promise<void> {
    const shard = this.#open;
    this.#open = null;
    await shard?.abort();
  }
}

/**
 * Writes an index for indexed WebDataset readers (wids): shard URLs relative to the
 * index file, with sample counts, sizes and MD5 sums.
 */
export async function writeWidsIndex(storage: Storage, name: string, shards: readonly ShardInfo[]): Promise<string> {
  const index = {
    __kind__: 'wids-shard-index-v1',
    wids_version: 1,
    name,
    shardlist: shards.map((shard) => ({ url: `${shard.name}.tar`, nsamples: shard.samples, filesize: shard.bytes, md5sum: shard.md5 })),
  };
  const file = `${name}.wids.json`;
  await storage.writeObject(file, `${JSON.stringify(index, null, 2)}\n`);
  return file;
}
