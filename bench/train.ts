/**
 * Images per second of one SwAV training step with the default model, crops and batch, in
 * TensorFlow.js and in PyTorch (bench/train_torch.py, same network and algorithm), measured in
 * the same run. Random crops stand in for data, so decoding is not timed.
 *
 *   node --import tsx bench/train.ts [--backend wasm] [--steps 5] [--warmup 2] [--threads 2]
 *
 * PYTHON names the interpreter that has torch (default python3; Debian's python3-torch
 * installs into /usr/bin/python3).
 */
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { parseArgs } from 'node:util';

import * as tf from '@tensorflow/tfjs';

import { cropSizes, DEFAULT_AUGMENT_CONFIG } from '../src/train/augment.js';
import { selectBackend, type BackendChoice } from '../src/train/backend.js';
import { DEFAULT_MODEL_CONFIG, SwavModel } from '../src/train/model.js';
import { DEFAULT_OPTIMIZER_CONFIG, LarsSgd } from '../src/train/optimizer.js';
import { DEFAULT_TRAIN_OPTIONS } from '../src/train/run.js';
import { DEFAULT_SWAV_CONFIG, SwavTrainer } from '../src/train/trainer.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'auto' },
    steps: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '2' },
    threads: { type: 'string', default: String(os.availableParallelism()) },
  },
});
const steps = Number(values.steps);
const warmup = Number(values.warmup);
const batch = DEFAULT_TRAIN_OPTIONS.batchSize;
const sizes = cropSizes(DEFAULT_AUGMENT_CONFIG);
const model = DEFAULT_MODEL_CONFIG;

async function timeTensorFlowJs(): Promise<{ backend: string; secondsPerStep: number }> {
  const backend = await selectBackend(values.backend as BackendChoice);
  const trainer = new SwavTrainer(new SwavModel(model, 0), new LarsSgd(DEFAULT_OPTIMIZER_CONFIG), DEFAULT_SWAV_CONFIG);
  const crops = sizes.map((size) => tf.randomNormal([batch, size, size, 3]) as tf.Tensor4D);
  for (let i = 0; i < warmup; i++) trainer.step(crops, { step: i, epoch: 0, learningRate: 0.6 });
  const start = performance.now();
  for (let i = 0; i < steps; i++) trainer.step(crops, { step: warmup + i, epoch: 0, learningRate: 0.6 });
  const secondsPerStep = (performance.now() - start) / 1000 / steps;
  tf.dispose(crops);
  trainer.dispose();
  return { backend: backend.choice, secondsPerStep };
}

function timePyTorch(): { framework: string; threads: number; seconds_per_step: number; images_per_second: number } {
  const args = [
    new URL('./train_torch.py', import.meta.url).pathname,
    `--batch=${batch}`,
    `--sizes=${sizes.join(',')}`,
    `--width=${model.width}`,
    `--depths=${model.stageDepths.join(',')}`,
    `--hidden=${model.hiddenDim}`,
    `--dim=${model.embeddingDim}`,
    `--prototypes=${model.prototypes}`,
    `--warmup=${warmup}`,
    `--steps=${steps}`,
    `--threads=${values.threads}`,
  ];
  const python = process.env.PYTHON ?? 'python3';
  let output: string;
  try {
    output = execFileSync(python, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? '').trim().split('\n').at(-1);
    process.stderr.write(`PyTorch benchmark failed with ${python}: ${stderr}. Set PYTHON to an interpreter that has torch.\n`);
    process.exit(1);
  }
  return JSON.parse(output.trim().split('\n').at(-1) as string) as ReturnType<typeof timePyTorch>;
}

const tfjs = await timeTensorFlowJs();
const torch = timePyTorch();
const tfjsRate = batch / tfjs.secondsPerStep;
const result = {
  machine: `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} cores`,
  batch,
  crops: sizes,
  model,
  tensorflowJs: { backend: tfjs.backend, secondsPerStep: tfjs.secondsPerStep, imagesPerSecond: tfjsRate },
  pytorch: torch,
  pytorchOverTensorflowJs: torch.images_per_second / tfjsRate,
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
