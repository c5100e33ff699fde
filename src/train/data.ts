/**
 * Training data from WebDataset shards: tar files whose members are grouped into samples by
 * key (the base name up to its first dot, with any folder prefix), read as a stream.
 *
 * Each epoch reads the shards in an order shuffled from (seed, epoch), passes the samples
 * through a shuffle buffer drawn from the same seed, and gives the n-th sample of the epoch the
 * augmentation seed deriveSeed(seed, epoch, n). The order and the crops are therefore a
 * function of (seed, epoch) alone, and a resumed run skips the samples it has consumed without
 * decoding them.
 */
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';

import tarStream from 'tar-stream';

import { log } from '../log.js';
import { cropSizes, makeCrops, validateAugmentConfig, type AugmentConfig } from './augment.js';
import type { AugmentRequest, AugmentResponse, AugmentWorkerData } from './augment-worker.js';
import { decodeImage } from './decode.js';
import { deriveSeed, Rng } from './rng.js';
import { requireIntegerInRange } from './validate.js';

/** Extensions read as the sample's image, in order of preference. */
export const IMAGE_EXTENSIONS = ['jpg', 'jpeg', 'png', 'webp'] as const;

export interface ShardSample {
  key: string;
  shard: string;
  /** Encoded image bytes, or undefined when the sample has no image member. */
  image: Buffer | undefined;
}

/** Lists the .tar files of a folder, sorted by name; throws when there is none. */
export async function listShards(folder: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(folder);
  } catch (error) {
    throw new Error(`Cannot read the shard folder ${folder}: ${(error as Error).message}`);
  }
  const shards = names.filter((name) => name.endsWith('.tar')).sort();
  if (shards.length === 0) {
    throw new Error(`No WebDataset shards (*.tar) found in ${folder}; point --shards at the folder the pipeline wrote`);
  }
  return shards.map((name) => path.join(folder, name));
}

/** Splits a member name into the WebDataset key and extension, at the first dot of the base name. */
export function splitMemberName(name: string): { key: string; extension: string } {
  const slash = name.lastIndexOf('/');
  const dot = name.indexOf('.', slash + 1);
  if (dot === -1) return { key: name, extension: '' };
  return { key: name.slice(0, dot), extension: name.slice(dot + 1).toLowerCase() };
}

function pickImage(files: Map<string, Buffer>): Buffer | undefined {
  for (const extension of IMAGE_EXTENSIONS) {
    const bytes = files.get(extension);
    if (bytes !== undefined) return bytes;
  }
  return undefined;
}

/** Streams the samples of one shard in file order; members of one sample must be adjacent. */
export async function* readShard(shard: string): AsyncGenerator<ShardSample> {
  const extract = tarStream.extract();
  const input = createReadStream(shard);
  input.on('error', (error) => extract.destroy(error));
  input.pipe(extract);

  let key: string | undefined;
  let files = new Map<string, Buffer>();
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    if (entry.header.type !== 'file') continue;
    const member = splitMemberName(entry.header.name);
    if (member.key !== key) {
      if (key !== undefined) yield { key, shard, image: pickImage(files) };
      key = member.key;
      files = new Map();
    }
    files.set(member.extension, Buffer.concat(chunks));
  }
  if (key !== undefined) yield { key, shard, image: pickImage(files) };
}

/** Counts the samples that have an image member, reading headers and bodies but decoding nothing. */
export async function countSamples(shards: string[]): Promise<number> {
  let count = 0;
  for (const shard of shards) {
    for await (const sample of readShard(shard)) {
      if (sample.image !== undefined) count++;
    }
  }
  return count;
}

/** Samples of one epoch in shuffled order, each with its 0-based position in the epoch. */
export async function* epochSamples(shards: string[], seed: number, epoch: number, shuffleBuffer: number): AsyncGenerator<ShardSample & { position: number }> {
  const rng = new Rng(deriveSeed(seed, epoch, 0x5a4d));
  const order = rng.shuffle([...shards]);
  const buffer: ShardSample[] = [];
  let position = 0;
  for (const shard of order) {
    for await (const sample of readShard(shard)) {
      if (buffer.length < shuffleBuffer) {
        buffer.push(sample);
        continue;
      }
      const j = rng.integer(buffer.length);
      yield { ...(buffer[j] as ShardSample), position: position++ };
      buffer[j] = sample;
    }
  }
  rng.shuffle(buffer);
  for (const sample of buffer) yield { ...sample, position: position++ };
}

export interface DataConfig {
  /** Folder of .tar shards. */
  shardsDir: string;
  batchSize: number;
  /** Samples held for shuffling; 1 keeps the shard order. */
  shuffleBuffer: number;
  /** Worker threads for decoding and augmentation; 0 runs them on the main thread. */
  workers: number;
  /** Images are reduced so that their shorter side is at most this many pixels before cropping. */
  maxShortSide: number;
  augment: AugmentConfig;
}

export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, os.availableParallelism() - 1));
}

/** One batch of crops, in crop order (global crops first), each [batchSize, size, size, 3] flattened. */
export interface CropBatch {
  crops: Float32Array[];
  sizes: number[];
  /** Samples of this epoch consumed up to and including this batch, skipped ones included. */
  samplesConsumed: number;
}

export interface DataCounters {
  /** Samples without a .jpg/.jpeg/.png/.webp member. */
  missingImage: number;
  /** Samples whose image failed to decode. */
  corrupt: number;
}

/** A worker thread died: the run cannot go on, unlike with a corrupt sample. */
export class WorkerFailedError extends Error {
  constructor(cause: Error) {
    super(`Augmentation worker thread failed: ${cause.message}`, { cause });
    this.name = 'WorkerFailedError';
  }
}

/** Runs decode-and-crop jobs on worker threads, or inline when `workers` is 0. */
class AugmentPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, { resolve: (crops: Float32Array[]) => void; reject: (error: Error) => void }>();
  private nextId = 0;
  private nextWorker = 0;
  private failure: WorkerFailedError | undefined;

  constructor(
    private readonly config: AugmentConfig,
    private readonly maxShortSide: number,
    workerCount: number,
  ) {
    // Compiled, the worker is a .js file next to this module. Run from the TypeScript sources
    // (tests, tsx), it is a .ts file, and the worker needs tsx's loader.
    const fromSources = import.meta.url.endsWith('.ts');
    const script = new URL(`./augment-worker.${fromSources ? 'ts' : 'js'}`, import.meta.url);
    const workerData: AugmentWorkerData = { config, maxShortSide };
    for (let i = 0; i < workerCount; i++) {
      const worker = fromSources
        ? new Worker(
            `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(script.href)}); });`,
            { eval: true, workerData },
          )
        : new Worker(script, { workerData });
      worker.on('message', (response: AugmentResponse) => this.settle(response));
      worker.on('error', (error) => this.failAll(error));
      worker.on('exit', (code) => {
        if (code !== 0) this.failAll(new Error(`exited with code ${code}`));
      });
      this.workers.push(worker);
    }
  }

  private settle(response: AugmentResponse): void {
    const waiter = this.pending.get(response.id);
    if (waiter === undefined) return;
    this.pending.delete(response.id);
    if ('error' in response) waiter.reject(new Error(response.error));
    else waiter.resolve(response.crops);
  }

  private failAll(error: Error): void {
    this.failure ??= new WorkerFailedError(error);
    for (const waiter of this.pending.values()) waiter.reject(this.failure);
    this.pending.clear();
  }

  async crops(bytes: Buffer, seed: number): Promise<Float32Array[]> {
    if (this.workers.length === 0) {
      return makeCrops(await decodeImage(bytes, this.maxShortSide), seed, this.config);
    }
    if (this.failure !== undefined) throw this.failure;
    const id = this.nextId++;
    const worker = this.workers[this.nextWorker++ % this.workers.length] as Worker;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // Copy into a fresh buffer so it can be transferred without detaching a pooled Buffer.
      const request: AugmentRequest = { id, bytes: new Uint8Array(bytes), seed };
      worker.postMessage(request, [request.bytes.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((worker) => worker.terminate()));
    this.workers.length = 0;
  }
}

/**
 * Streams the batches of one epoch. Batches are full (the last partial batch is dropped, as
 * SwAV does, so that Sinkhorn always gets batchSize samples). Samples that fail to decode are
 * skipped and counted in `counters`.
 */
export async function* epochBatches(
  shards: string[],
  config: DataConfig,
  seed: number,
  epoch: number,
  skipSamples: number,
  counters: DataCounters,
): AsyncGenerator<CropBatch> {
  validateDataConfig(config);
  const sizes = cropSizes(config.augment);
  const pool = new AugmentPool(config.augment, config.maxShortSide, config.workers);
  // Decode ahead by two batches: enough to keep the workers busy during a step, bounded in memory.
  const window = Math.max(2 * config.batchSize, 4);
  const inFlight: { position: number; key: string; crops: Promise<Float32Array[]> }[] = [];
  let batch: Float32Array[][] = [];

  const flushOne = async (): Promise<CropBatch | undefined> => {
    const job = inFlight.shift();
    if (job === undefined) return undefined;
    try {
      batch.push(await job.crops);
    } catch (error) {
      if (error instanceof WorkerFailedError) throw error;
      counters.corrupt++;
      if (counters.corrupt <= 10) log.warn({ key: job.key, error: (error as Error).message }, 'skipped a sample whose image failed to decode');
      return undefined;
    }
    if (batch.length < config.batchSize) return undefined;
    const full = assembleBatch(batch, sizes, job.position + 1);
    batch = [];
    return full;
  };

  try {
    for await (const sample of epochSamples(shards, seed, epoch, config.shuffleBuffer)) {
      if (sample.position < skipSamples) continue;
      if (sample.image === undefined) {
        counters.missingImage++;
        continue;
      }
      const crops = pool.crops(sample.image, deriveSeed(seed, epoch, sample.position));
      // Rejections are handled in order by flushOne; this stops them from counting as unhandled meanwhile.
      crops.catch(() => undefined);
      inFlight.push({ position: sample.position, key: sample.key, crops });
      if (inFlight.length >= window) {
        const ready = await flushOne();
        if (ready !== undefined) yield ready;
      }
    }
    while (inFlight.length > 0) {
      const ready = await flushOne();
      if (ready !== undefined) yield ready;
    }
  } finally {
    await pool.close();
  }
}

function assembleBatch(samples: Float32Array[][], sizes: number[], samplesConsumed: number): CropBatch {
  const crops = sizes.map((size, c) => {
    const stride = size * size * 3;
    const values = new Float32Array(samples.length * stride);
    samples.forEach((sampleCrops, b) => values.set(sampleCrops[c] as Float32Array, b * stride));
    return values;
  });
  return { crops, sizes, samplesConsumed };
}

export function validateDataConfig(config: DataConfig): DataConfig {
  requireIntegerInRange('batchSize', config.batchSize, 2);
  requireIntegerInRange('shuffleBuffer', config.shuffleBuffer, 1);
  requireIntegerInRange('workers', config.workers, 0, 64);
  requireIntegerInRange('maxShortSide', config.maxShortSide, 1);
  validateAugmentConfig(config.augment);
  return config;
}

/** Total size of the shards in bytes, for the start-of-run log. */
export async function shardBytes(shards: string[]): Promise<number> {
  const sizes = await Promise.all(shards.map(async (shard) => (await stat(shard)).size));
  return sizes.reduce((a, b) => a + b, 0);
}
