import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { randomBytes } from 'node:crypto';

/** An object being written: invisible under its name until `commit` resolves. */
export interface PendingObject {
  stream: Writable;
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export interface StoredObject {
  /** Path relative to the storage root, with forward slashes. */
  path: string;
  size: number;
}

/**
 * Destination of shards, status files and reports: a local folder or an S3 prefix. Writes
 * are atomic, so a reader sees the whole object or nothing.
 */
export interface Storage {
  /** The root as a user would write it: a folder path or s3://bucket/prefix. */
  readonly root: string;
  createObject(relativePath: string): Promise<PendingObject>;
  writeObject(relativePath: string, data: Buffer | string): Promise<void>;
  readObject(relativePath: string): Promise<Buffer>;
  /** Reads bytes [start, end) of an object. */
  readRange(relativePath: string, start: number, end: number): Promise<Buffer>;
  openReadStream(relativePath: string): Promise<Readable>;
  /** Lists objects under a relative prefix, sorted by path. */
  list(prefix?: string): Promise<StoredObject[]>;
  exists(relativePath: string): Promise<boolean>;
  remove(relativePath: string): Promise<void>;
  close(): Promise<void>;
}

/** Orders objects by path in code-unit order, which is how S3 lists keys. */
export function byPath(a: StoredObject, b: StoredObject): number {
  if (a.path === b.path) return 0;
  return a.path < b.path ? -1 : 1;
}

export function isS3Url(location: string): boolean {
  return location.startsWith('s3://');
}

/** A local folder; objects are written under a hidden temporary name and renamed into place. */
export class LocalStorage implements Storage {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  #resolve(relativePath: string): string {
    const resolved = path.resolve(this.root, relativePath);
    if (resolved !== this.root && !resolved.startsWith(`${this.root}${path.sep}`)) {
      throw new Error(`Invalid object path "${relativePath}": it leaves the storage root ${this.root}`);
    }
    return resolved;
  }

  #temporaryPath(target: string): string {
    return path.join(path.dirname(target), `.${path.basename(target)}.${randomBytes(4).toString('hex')}.partial`);
  }

  async createObject(relativePath: string): Promise<PendingObject> {
    const target = this.#resolve(relativePath);
    const temporary = this.#temporaryPath(target);
    await mkdir(path.dirname(target), { recursive: true });
    const stream = createWriteStream(temporary, { highWaterMark: 1 << 20 });
    return {
      stream,
      commit: async () => {
        if (!stream.writableFinished) {
          stream.end();
          await finished(stream);
        }
        await rename(temporary, target);
      },
      abort: async () => {
        stream.destroy();
        await rm(temporary, { force: true });
      },
    };
  }

  async writeObject(relativePath: string, data: Buffer | string): Promise<void> {
    const target = this.#resolve(relativePath);
    await mkdir(path.dirname(target), { recursive: true });
    const temporary = this.#temporaryPath(target);
    await writeFile(temporary, data);
    await rename(temporary, target);
  }

  readObject(relativePath: string): Promise<Buffer> {
    return readFile(this.#resolve(relativePath));
  }

  async readRange(relativePath: string, start: number, end: number): Promise<Buffer> {
    const handle = await open(this.#resolve(relativePath), 'r');
    try {
      const buffer = Buffer.alloc(Math.max(0, end - start));
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
      return buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  async openReadStream(relativePath: string): Promise<Readable> {
    return createReadStream(this.#resolve(relativePath));
  }

  async list(prefix = ''): Promise<StoredObject[]> {
    let entries;
    try {
      entries = await readdir(this.root, { recursive: true, withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const objects: StoredObject[] = [];
    for (const entry of entries) {
      if (!entry.isFile() || entry.name.endsWith('.partial')) continue;
      const full = path.join(entry.parentPath, entry.name);
      const relative = path.relative(this.root, full).split(path.sep).join('/');
      if (!relative.startsWith(prefix)) continue;
      objects.push({ path: relative, size: (await stat(full)).size });
    }
    return objects.sort(byPath);
  }

  async exists(relativePath: string): Promise<boolean> {
    return stat(this.#resolve(relativePath)).then(
      () => true,
      () => false,
    );
  }

  async remove(relativePath: string): Promise<void> {
    await rm(this.#resolve(relativePath), { force: true });
  }

  async close(): Promise<void> {}
}
