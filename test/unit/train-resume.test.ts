import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';

import sharp from 'sharp';
import tarStream from 'tar-stream';

import { DEFAULT_AUGMENT_CONFIG } from '../../src/train/augment.js';
import { readCheckpoint } from '../../src/train/checkpoint.js';
import { DEFAULT_TRAIN_OPTIONS, runTraining, type TrainOptions } from '../../src/train/run.js';

/** Writes one shard of `count` 12 x 12 PNGs with random coloured blocks, plus a corrupt sample. */
async function writeSyntheticShard(file: string, count: number): Promise<void> {
  const pack = tarStream.pack();
  const done = pipeline(pack, createWriteStream(file));
  let state = 12345;
  const next = (): number => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state >>> 24;
  };
  for (let i = 0; i < count; i++) {
    const pixels = Buffer.alloc(12 * 12 * 3);
    for (let p = 0; p < pixels.length; p++) pixels[p] = next();
    const png = await sharp(pixels, { raw: { width: 12, height: 12, channels: 3 } }).png().toBuffer();
    const key = String(i).padStart(6, '0');
    pack.entry({ name: `${key}.png`, mtime: new Date(0) }, png);
    pack.entry({ name: `${key}.json`, mtime: new Date(0) }, JSON.stringify({ index: i }));
    if (i === 5) pack.entry({ name: 'broken.png', mtime: new Date(0) }, Buffer.from('not an image'));
  }
  pack.finalize();
  await done;
}

let workDir: string;
let shardsDir: string;

function tinyOptions(outputDir: string, overrides: Partial<TrainOptions> = {}): TrainOptions {
  return {
    ...DEFAULT_TRAIN_OPTIONS,
    shardsDir,
    outputDir,
    epochs: 2,
    batchSize: 8,
    seed: 7,
    backend: 'wasm',
    workers: 0,
    shuffleBuffer: 10,
    maxShortSide: 16,
    model: { inputChannels: 3, width: 4, stageDepths: [1, 1], hiddenDim: 16, embeddingDim: 8, prototypes: 6 },
    swav: { ...DEFAULT_TRAIN_OPTIONS.swav, queueLength: 16, queueStartEpoch: 1, freezePrototypesSteps: 2 },
    optimizer: { ...DEFAULT_TRAIN_OPTIONS.optimizer, baseLr: 0.5, warmupEpochs: 0.5 },
    augment: { ...DEFAULT_AUGMENT_CONFIG, globalSize: 8, localCrops: 2, localSize: 4 },
    checkpointEverySteps: 100,
    progress: false,
    ...overrides,
  };
}

async function finalState(outputDir: string): Promise<Map<string, Float32Array>> {
  const pointer = JSON.parse(await readFile(path.join(outputDir, 'checkpoints', 'latest.json'), 'utf8')) as { checkpoint: string };
  const loaded = await readCheckpoint(path.join(outputDir, 'checkpoints', pointer.checkpoint));
  return new Map([...loaded.tensors].map(([name, entry]) => [name, entry.values]));
}

/** Reads the metrics of each step without the timings, which differ between runs. */
async function metricLines(outputDir: string): Promise<unknown[]> {
  const text = await readFile(path.join(outputDir, 'metrics.jsonl'), 'utf8');
  return text
    .trim()
    .split('\n')
    .map((line) => {
      const { elapsedSeconds: _elapsed, imagesPerSecond: _rate, ...rest } = JSON.parse(line) as Record<string, unknown>;
      return rest;
    });
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'geoshard-train-resume-'));
  shardsDir = path.join(workDir, 'shards');
  await mkdir(shardsDir);
  await writeSyntheticShard(path.join(shardsDir, 'train-000000.tar'), 26);
});

after(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe('training resume', () => {
  test('stop and resume equals one run', async () => {
    const straightDir = path.join(workDir, 'straight');
    const straight = await runTraining(tinyOptions(straightDir));
    assert.equal(straight.stepsPerEpoch, 3);
    assert.equal(straight.steps, 6);
    assert.equal(straight.stoppedEarly, false);
    assert.equal(straight.counters.corrupt, 2, 'the corrupt sample is skipped in each epoch');

    // Stop inside the second epoch, after the queue has started; decode on a worker thread this time.
    const resumedDir = path.join(workDir, 'resumed');
    const first = await runTraining(tinyOptions(resumedDir, { maxSteps: 4, workers: 1 }));
    assert.equal(first.steps, 4);
    assert.equal(first.stoppedEarly, true);
    assert.equal(first.encoderDir, path.join(resumedDir, 'encoder'));
    const second = await runTraining(tinyOptions(resumedDir));
    assert.equal(second.steps, 6);
    assert.equal(second.stoppedEarly, false);

    const expected = await finalState(straightDir);
    const actual = await finalState(resumedDir);
    assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), 'same tensors');
    assert.ok([...expected.keys()].some((name) => name.startsWith('queue/')), 'queue is checkpointed');
    assert.ok([...expected.keys()].some((name) => name.startsWith('momentum/')), 'momentum is checkpointed');
    for (const [name, values] of expected) {
      assert.deepEqual(actual.get(name), values, `tensor ${name}`);
    }
    assert.deepEqual(await metricLines(resumedDir), await metricLines(straightDir), 'metrics');
  });

  test('resume with other options is rejected', async () => {
    const outputDir = path.join(workDir, 'mismatch');
    await runTraining(tinyOptions(outputDir, { maxSteps: 1 }));
    await assert.rejects(runTraining(tinyOptions(outputDir, { batchSize: 4 })), /was made with batchSize 8, this run has 4/);
  });

  test('empty shard folder is an error', async () => {
    const emptyDir = path.join(workDir, 'empty');
    await mkdir(emptyDir);
    await assert.rejects(runTraining(tinyOptions(path.join(workDir, 'out-empty'), { shardsDir: emptyDir })), /No WebDataset shards \(\*\.tar\) found in/);
  });
});
