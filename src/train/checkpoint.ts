/**
 * Checkpoints that resume a run exactly: every model tensor (parameters and batch-norm running
 * statistics), the momentum buffers, the queue, the step and the data position.
 *
 * Layout of a checkpoint folder: state.json (metadata and a table of tensors) and tensors.bin
 * (their float32 values, little-endian, back to back). The folder is written under a temporary
 * name and renamed, and `latest.json` in the parent folder is replaced atomically to point at
 * it, so a crash leaves the previous checkpoint in place.
 */
import { mkdir, readFile, rename, rm, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

import * as tf from '@tensorflow/tfjs';

import { log } from '../log.js';
import type { ModelConfig } from './model.js';
import type { OptimizerConfig } from './optimizer.js';
import type { SwavTrainer, SwavConfig } from './trainer.js';

export const CHECKPOINT_FORMAT_VERSION = 1;

/** Position in the data stream. With the seed, it fixes every random draw still to come. */
export interface DataPosition {
  /** Epoch (0-based) in progress. */
  epoch: number;
  /** Samples read from the shards in this epoch, skipped ones included. */
  samplesConsumedInEpoch: number;
}

export interface CheckpointMetadata {
  formatVersion: number;
  /** Completed steps. */
  step: number;
  seed: number;
  position: DataPosition;
  queueFilled: number;
  model: ModelConfig;
  swav: SwavConfig;
  optimizer: OptimizerConfig;
  /** Free-form settings of the run (batch size, crops...) that a resumed run must match. */
  run: Record<string, unknown>;
}

interface TensorEntry {
  name: string;
  shape: number[];
  /** Offset in float32 elements into tensors.bin. */
  offset: number;
}

interface StateFile extends CheckpointMetadata {
  tensors: TensorEntry[];
}

/** Collects the trainer's tensors under stable names: model, momentum buffers, queue. */
function namedTensors(trainer: SwavTrainer): Map<string, tf.Variable> {
  const tensors = new Map<string, tf.Variable>();
  for (const [name, variable] of trainer.model.variables) tensors.set(`model/${name}`, variable);
  for (const [name, buffer] of trainer.optimizer.buffers) tensors.set(`momentum/${name}`, buffer);
  for (const [name, queued] of trainer.queue) tensors.set(`queue/${name}`, queued);
  return tensors;
}

export async function writeTensorFile(folder: string, tensors: Map<string, tf.Tensor>): Promise<TensorEntry[]> {
  const entries: TensorEntry[] = [];
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, tensor] of tensors) {
    const values = (await tensor.data()) as Float32Array;
    entries.push({ name, shape: tensor.shape, offset });
    chunks.push(Buffer.from(values.buffer, values.byteOffset, values.byteLength));
    offset += values.length;
  }
  await writeFile(path.join(folder, 'tensors.bin'), Buffer.concat(chunks));
  return entries;
}

export async function readTensorFile(folder: string, entries: TensorEntry[]): Promise<Map<string, { shape: number[]; values: Float32Array }>> {
  const bytes = await readFile(path.join(folder, 'tensors.bin'));
  // Copy into an aligned buffer: a Buffer from readFile may start at any byte offset.
  const all = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(all.buffer).set(bytes);
  const result = new Map<string, { shape: number[]; values: Float32Array }>();
  for (const entry of entries) {
    const size = entry.shape.reduce((a, b) => a * b, 1);
    if (entry.offset + size > all.length) {
      throw new Error(`Checkpoint ${folder} is truncated: tensor ${entry.name} ends past tensors.bin`);
    }
    result.set(entry.name, { shape: entry.shape, values: all.slice(entry.offset, entry.offset + size) });
  }
  return result;
}

/** Writes a checkpoint folder named `name` under `parent` and returns its path. */
export async function saveCheckpoint(parent: string, name: string, trainer: SwavTrainer, metadata: CheckpointMetadata, updateLatest = true): Promise<string> {
  await mkdir(parent, { recursive: true });
  const folder = path.join(parent, name);
  const temporary = path.join(parent, `.${name}.tmp-${process.pid}`);
  await rm(temporary, { recursive: true, force: true });
  await mkdir(temporary);

  const tensors = await writeTensorFile(temporary, namedTensors(trainer));
  const state: StateFile = { ...metadata, tensors };
  await writeFile(path.join(temporary, 'state.json'), `${JSON.stringify(state, null, 2)}\n`);
  await rm(folder, { recursive: true, force: true });
  await rename(temporary, folder);

  if (updateLatest) {
    const pointer = path.join(parent, 'latest.json');
    await writeFile(`${pointer}.tmp-${process.pid}`, `${JSON.stringify({ checkpoint: name, step: metadata.step })}\n`);
    await rename(`${pointer}.tmp-${process.pid}`, pointer);
  }
  log.debug({ checkpoint: folder, step: metadata.step }, 'checkpoint saved');
  return folder;
}

/** Deletes checkpoint folders named step-* under `parent` except the newest `keep`. */
export async function pruneCheckpoints(parent: string, keep: number): Promise<void> {
  const names = (await readdir(parent)).filter((name) => /^step-\d+$/.test(name)).sort();
  for (const name of names.slice(0, Math.max(names.length - keep, 0))) {
    await rm(path.join(parent, name), { recursive: true, force: true });
  }
}

export interface LoadedCheckpoint {
  folder: string;
  metadata: CheckpointMetadata;
  tensors: Map<string, { shape: number[]; values: Float32Array }>;
}

/** Reads the checkpoint that `latest.json` under `parent` points at, or undefined if there is none. */
export async function readLatestCheckpoint(parent: string): Promise<LoadedCheckpoint | undefined> {
  let pointer: { checkpoint: string };
  try {
    pointer = JSON.parse(await readFile(path.join(parent, 'latest.json'), 'utf8')) as { checkpoint: string };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  return readCheckpoint(path.join(parent, pointer.checkpoint));
}

export async function readCheckpoint(folder: string): Promise<LoadedCheckpoint> {
  const state = JSON.parse(await readFile(path.join(folder, 'state.json'), 'utf8')) as StateFile;
  if (state.formatVersion !== CHECKPOINT_FORMAT_VERSION) {
    throw new Error(`Checkpoint ${folder} has format version ${state.formatVersion}, expected ${CHECKPOINT_FORMAT_VERSION}`);
  }
  const tensors = await readTensorFile(folder, state.tensors);
  const { tensors: _table, ...metadata } = state;
  return { folder, metadata, tensors };
}

/**
 * Copies a checkpoint's tensors into a trainer built with the same configuration: model
 * variables, momentum buffers (created here) and queue.
 */
export function restoreTrainer(trainer: SwavTrainer, checkpoint: LoadedCheckpoint): void {
  const assign = (target: tf.Variable, name: string, values: Float32Array, shape: number[]): void => {
    if (target.shape.join('x') !== shape.join('x')) {
      throw new Error(`Checkpoint tensor ${name} has shape [${shape.join(', ')}], the model expects [${target.shape.join(', ')}]`);
    }
    const tensor = tf.tensor(values, shape);
    target.assign(tensor);
    tensor.dispose();
  };

  for (const [name, variable] of trainer.model.variables) {
    const stored = checkpoint.tensors.get(`model/${name}`);
    if (stored === undefined) throw new Error(`Checkpoint ${checkpoint.folder} has no tensor model/${name}`);
    assign(variable, `model/${name}`, stored.values, stored.shape);
  }
  for (const [key, stored] of checkpoint.tensors) {
    const [kind, name] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
    if (kind === 'model') continue;
    const initial = tf.tensor(stored.values, stored.shape);
    const variable = tf.variable(initial, false);
    initial.dispose();
    if (kind === 'momentum') trainer.optimizer.buffers.set(name, variable);
    else if (kind === 'queue') trainer.queue.set(name, variable);
    else throw new Error(`Checkpoint ${checkpoint.folder} has an unknown tensor ${key}`);
  }
  trainer.queueFilled = checkpoint.metadata.queueFilled;
}
