import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';

/** One WebDataset sample: files keyed by extension, written as `{key}.{extension}`. */
export interface ShardSample {
  key: string;
  files: Record<string, Buffer>;
}

export interface ShardInfo {
  name: string;
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
 * Checks a WebDataset key: readers split member names at the first dot of the base
 * name, so a key with a dot would change the extension the reader sees.
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

  constructor(readonly name: string, readonly temporaryPath: string) {
    const tap = new PassThrough();
    tap.on('data', (chunk: Buffer) => {
      this.#md5.update(chunk);
      this.bytes += chunk.length;
    });
    this.#done = pipeline(this.#pack, tap, createWriteStream(temporaryPath));
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

  async finish(): Promise<string> {
    this.#pack.finalize();
    await this.#done;
    return this.#md5.digest('hex');
  }

  async abort(): Promise<void> {
    this.#pack.destroy();
    await this.#done.catch(() => undefined);
    await rm(this.temporaryPath, { force: true });
  }
}

/**
 * Writes samples into tar shards of at most `shardSize` samples, named
 * `{prefix}-{000000}.tar`. A shard is written under a temporary name and renamed when
 * complete, so a reader never sees half a shard; a `.stats.json` lies beside each one.
 */
export class ShardWriter {
  readonly #folder: string;
  readonly #prefix: string;
  readonly #shardSize: number;
  readonly #onShard: ((info: ShardInfo) => Promise<void> | void) | undefined;
  readonly #written: ShardInfo[] = [];
  #open: OpenShard | null = null;
  #nextIndex: number;

  constructor(options: {
    folder: string;
    prefix: string;
    shardSize: number;
    firstIndex?: number;
    onShard?: (info: ShardInfo) => Promise<void> | void;
  }) {
    this.#folder = options.folder;
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
      await mkdir(this.#folder, { recursive: true });
      const name = shardName(this.#prefix, this.#nextIndex);
      this.#nextIndex += 1;
      this.#open = new OpenShard(name, path.join(this.#folder, `.${name}.tar.partial`));
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
    const finalPath = path.join(this.#folder, `${shard.name}.tar`);
    await rename(shard.temporaryPath, finalPath);

    const info: ShardInfo = {
      name: shard.name,
      path: finalPath,
      samples: shard.samples,
      bytes: shard.bytes,
      md5,
      firstKey: shard.firstKey,
      lastKey: shard.lastKey,
    };
    const stats = { shard: `${shard.name}.tar`, samples: info.samples, bytes: info.bytes, md5, first_key: info.firstKey, last_key: info.lastKey };
    await writeFile(path.join(this.#folder, `${shard.name}.stats.json`), `${JSON.stringify(stats, null, 2)}\n`);
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
export async function writeWidsIndex(folder: string, name: string, shards: readonly ShardInfo[]): Promise<string> {
  const index = {
    __kind__: 'wids-shard-index-v1',
    wids_version: 1,
    name,
    shardlist: shards.map((shard) => ({ url: `${shard.name}.tar`, nsamples: shard.samples, filesize: shard.bytes, md5sum: shard.md5 })),
  };
  const file = path.join(folder, `${name}.wids.json`);
  await writeFile(file, `${JSON.stringify(index, null, 2)}\n`);
  return file;
}
