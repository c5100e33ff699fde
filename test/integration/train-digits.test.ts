import assert from 'node:assert/strict';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { gunzipSync } from 'node:zlib';
import { after, before, test } from 'node:test';

import sharp from 'sharp';
import tarStream from 'tar-stream';

import { DEFAULT_AUGMENT_CONFIG, type RgbImage } from '../../src/train/augment.js';
import { embedImages, loadEncoder, type LoadedEncoder } from '../../src/train/encoder.js';
import { knnAccuracy } from '../../src/train/evaluate.js';
import { SwavModel } from '../../src/train/model.js';
import { DEFAULT_TRAIN_OPTIONS, runTraining, type TrainOptions } from '../../src/train/run.js';

// UCI handwritten digits as shipped by scikit-learn (CC-BY 4.0): 1797 rows of 64 grey levels
// 0..16 (8 x 8, row-major) and the label in the last column.
const CORPUS = new URL('../../../shared/corpus/digits/digits.csv.gz', import.meta.url);
const TRAINING_SECONDS = 45;
const PROTOTYPES = 40;

interface Digit {
  pixels: Uint8Array;
  label: number;
}

function readDigits(): Digit[] {
  const text = gunzipSync(readFileSync(CORPUS)).toString('utf8');
  return text
    .trim()
    .split('\n')
    .filter((line) => /^[0-9]/.test(line))
    .map((line) => {
      const values = line.split(',').map(Number);
      const label = values.pop() as number;
      return { pixels: Uint8Array.from(values, (v) => Math.round((v * 255) / 16)), label };
    });
}

/** Writes the digits as 8 x 8 grey PNGs with a .cls label into shards of 500 samples. */
async function writeShards(folder: string, digits: Digit[]): Promise<void> {
  for (let shard = 0; shard * 500 < digits.length; shard++) {
    const pack = tarStream.pack();
    const done = pipeline(pack, createWriteStream(path.join(folder, `digits-${String(shard).padStart(6, '0')}.tar`)));
    for (let i = shard * 500; i < Math.min((shard + 1) * 500, digits.length); i++) {
      const digit = digits[i] as Digit;
      const png = await sharp(Buffer.from(digit.pixels), { raw: { width: 8, height: 8, channels: 1 } }).png().toBuffer();
      const key = `digit${String(i).padStart(6, '0')}`;
      pack.entry({ name: `${key}.png`, mtime: new Date(0) }, png);
      pack.entry({ name: `${key}.cls`, mtime: new Date(0) }, String(digit.label));
    }
    pack.finalize();
    await done;
  }
}

function toImage(digit: Digit): RgbImage {
  const data = new Float32Array(64 * 3);
  digit.pixels.forEach((v, p) => data.fill(v / 255, p * 3, p * 3 + 3));
  return { width: 8, height: 8, data };
}

/** 5-NN accuracy of the second half of the digits against the first half. */
async function evaluate(encoder: LoadedEncoder, digits: Digit[]): Promise<number> {
  const features = await embedImages(encoder, digits.map(toImage));
  const half = Math.floor(digits.length / 2);
  const labels = digits.map((d) => d.label);
  return knnAccuracy(features.slice(0, half), labels.slice(0, half), features.slice(half), labels.slice(half), 5);
}

const corpusMissing = existsSync(CORPUS) ? false : `digits corpus not found at ${CORPUS.pathname}`;
let workDir: string;

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'geoshard-train-digits-'));
});

after(async () => {
  await rm(workDir, { recursive: true, force: true });
});

test('swav learns digit features', { skip: corpusMissing, timeout: 150_000 }, async () => {
  const digits = readDigits();
  assert.equal(digits.length, 1797);
  const shardsDir = path.join(workDir, 'shards');
  await mkdir(shardsDir);
  await writeShards(shardsDir, digits);

  const options: TrainOptions = {
    ...DEFAULT_TRAIN_OPTIONS,
    shardsDir,
    outputDir: path.join(workDir, 'run'),
    epochs: 10,
    batchSize: 64,
    seed: 1,
    backend: 'auto',
    workers: 1,
    shuffleBuffer: 2000,
    maxShortSide: 8,
    // K above the embedding dimension: with K <= D an embedding can be equidistant from every
    // prototype, and the loss settles at ln(K).
    model: { inputChannels: 3, width: 8, stageDepths: [1, 1], hiddenDim: 64, embeddingDim: 16, prototypes: PROTOTYPES },
    swav: { ...DEFAULT_TRAIN_OPTIONS.swav, epsilon: 0.02, freezePrototypesSteps: 10 },
    optimizer: { ...DEFAULT_TRAIN_OPTIONS.optimizer, baseLr: 1, finalLr: 0.01, warmupEpochs: 0.5, trustCoefficient: 0.005 },
    // Digits are 8 x 8 and not mirror-symmetric: crops at the native size, milder scales, no flips, light blur.
    augment: {
      ...DEFAULT_AUGMENT_CONFIG,
      globalSize: 8,
      globalScale: [0.5, 1],
      localCrops: 2,
      localSize: 6,
      localScale: [0.3, 0.6],
      flipProbability: 0,
      blurSigma: [0.1, 0.6],
    },
    maxSeconds: TRAINING_SECONDS,
    progress: false,
  };
  const result = await runTraining(options);
  assert.ok(result.steps >= 60, `trained only ${result.steps} steps in ${TRAINING_SECONDS} s`);

  const metrics = (await readFile(path.join(options.outputDir, 'metrics.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { loss: number });
  const lastLosses = metrics.slice(-10).map((m) => m.loss);
  const finalLoss = lastLosses.reduce((a, b) => a + b, 0) / lastLosses.length;

  const trained = await loadEncoder(result.encoderDir);
  const random: LoadedEncoder = { info: trained.info, model: new SwavModel(options.model, 12345) };
  const trainedAccuracy = await evaluate(trained, digits);
  const randomAccuracy = await evaluate(random, digits);
  console.log(JSON.stringify({ steps: result.steps, finalLoss, lnK: Math.log(PROTOTYPES), trainedAccuracy, randomAccuracy }));

  assert.ok(finalLoss < 0.9 * Math.log(PROTOTYPES), `final loss ${finalLoss} is not well below ln(K) = ${Math.log(PROTOTYPES)}`);
  assert.ok(
    trainedAccuracy >= randomAccuracy + 0.1,
    `kNN accuracy of the trained encoder ${trainedAccuracy} does not beat the random encoder's ${randomAccuracy} by 0.1`,
  );
  trained.model.dispose();
  random.model.dispose();
});
