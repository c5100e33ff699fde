/**
 * A whole training run: backend, data, model, the step loop, metrics, checkpoints, resume and
 * the exported encoder.
 *
 * Output folder layout:
 *   checkpoints/step-NNNNNNNN/  checkpoints (the newest `keepCheckpoints` are kept)
 *   checkpoints/latest.json     the checkpoint a resumed run starts from
 *   metrics.jsonl               one JSON object per step
 *   encoder/                    the trained backbone (see encoder.ts)
 *   debug-step-N/               the state before a step whose loss was not finite
 */
import { appendFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

import * as tf from '@tensorflow/tfjs';
import cliProgress from 'cli-progress';

import { log } from '../log.js';
import { DEFAULT_AUGMENT_CONFIG, type AugmentConfig } from './augment.js';
import { selectBackend, type BackendChoice } from './backend.js';
import {
  CHECKPOINT_FORMAT_VERSION,
  pruneCheckpoints,
  readLatestCheckpoint,
  restoreTrainer,
  saveCheckpoint,
  type CheckpointMetadata,
  type DataPosition,
} from './checkpoint.js';
import { countSamples, defaultWorkerCount, epochBatches, listShards, validateDataConfig, type DataConfig, type DataCounters } from './data.js';
import { exportEncoder } from './encoder.js';
import { DEFAULT_MODEL_CONFIG, SwavModel, type ModelConfig } from './model.js';
import { DEFAULT_OPTIMIZER_CONFIG, LarsSgd, learningRateAt, type OptimizerConfig } from './optimizer.js';
import { DEFAULT_SWAV_CONFIG, NonFiniteLossError, SwavTrainer, validateSwavConfig, type SwavConfig } from './trainer.js';
import { InvalidOptionError, requireIntegerInRange, requirePositiveNumber } from './validate.js';

export interface TrainOptions {
  shardsDir: string;
  outputDir: string;
  epochs: number;
  batchSize: number;
  seed: number;
  backend: BackendChoice;
  /** Decoding and augmentation threads; 0 decodes on the main thread. */
  workers: number;
  shuffleBuffer: number;
  maxShortSide: number;
  model: ModelConfig;
  swav: SwavConfig;
  optimizer: OptimizerConfig;
  augment: AugmentConfig;
  /** Save a checkpoint every this many steps (and at the end of every epoch). */
  checkpointEverySteps: number;
  keepCheckpoints: number;
  /** Continue from the latest checkpoint in outputDir when there is one. */
  resume: boolean;
  /** Stop (with a checkpoint) once this many steps are done in total; undefined runs every epoch. */
  maxSteps?: number;
  /** Stop (with a checkpoint) after this many seconds of this process's training. */
  maxSeconds?: number;
  /** Show a progress bar; defaults to whether stderr is a terminal. */
  progress?: boolean;
  /** Aborting stops after the current step, with a checkpoint. */
  signal?: AbortSignal;
}

export const DEFAULT_TRAIN_OPTIONS: Omit<TrainOptions, 'shardsDir' | 'outputDir'> = {
  epochs: 100,
  batchSize: 64,
  seed: 0,
  backend: 'auto',
  workers: defaultWorkerCount(),
  shuffleBuffer: 1000,
  maxShortSide: 64,
  model: DEFAULT_MODEL_CONFIG,
  swav: DEFAULT_SWAV_CONFIG,
  optimizer: DEFAULT_OPTIMIZER_CONFIG,
  augment: DEFAULT_AUGMENT_CONFIG,
  checkpointEverySteps: 200,
  keepCheckpoints: 2,
  resume: true,
};

export interface TrainResult {
  /** Steps completed in total, earlier runs included. */
  steps: number;
  totalSteps: number;
  stepsPerEpoch: number;
  /** Loss of the last step of this process, or undefined if it ran none. */
  lastLoss: number | undefined;
  /** True when maxSteps, maxSeconds or the signal ended the run before its last epoch. */
  stoppedEarly: boolean;
  /** Folder of the exported encoder (written on an early stop too). */
  encoderDir: string;
  counters: DataCounters;
}

/** Settings a resumed run must share with the checkpoint, because they shape the tensors or the data. */
function runSettings(options: TrainOptions): Record<string, unknown> {
  return {
    batchSize: options.batchSize,
    epochs: options.epochs,
    shuffleBuffer: options.shuffleBuffer,
    maxShortSide: options.maxShortSide,
    augment: options.augment,
  };
}

function validateTrainOptions(options: TrainOptions): void {
  requireIntegerInRange('epochs', options.epochs, 1);
  requireIntegerInRange('seed', options.seed, 0, 2 ** 32 - 1);
  requireIntegerInRange('checkpointEverySteps', options.checkpointEverySteps, 1);
  requireIntegerInRange('keepCheckpoints', options.keepCheckpoints, 1);
  if (options.maxSteps !== undefined) requireIntegerInRange('maxSteps', options.maxSteps, 1);
  if (options.maxSeconds !== undefined) requirePositiveNumber('maxSeconds', options.maxSeconds);
  validateSwavConfig(options.swav, options.batchSize);
  const crops = options.augment.globalCrops + options.augment.localCrops;
  if (options.swav.cropsForAssign.some((c) => c >= crops)) {
    throw new InvalidOptionError('swav.cropsForAssign', `crop indices below the ${crops} crops per image`, options.swav.cropsForAssign);
  }
}

function checkResumable(metadata: CheckpointMetadata, options: TrainOptions, folder: string): void {
  const expected = { ...runSettings(options), model: options.model, seed: options.seed };
  const stored = { ...metadata.run, model: metadata.model, seed: metadata.seed };
  for (const key of Object.keys(expected) as (keyof typeof expected)[]) {
    const a = JSON.stringify(stored[key]);
    const b = JSON.stringify(expected[key]);
    if (a !== b) {
      throw new Error(
        `The checkpoint in ${folder} was made with ${key} ${a}, this run has ${b}. ` +
          'Resume with the same options, or pass --no-resume or a new --output to start over.',
      );
    }
  }
}

/** Keeps the metrics of the steps a checkpoint contains, so that a resumed run does not log a step twice. */
async function truncateMetrics(file: string, lastStep: number): Promise<void> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  const kept = text.split('\n').filter((line) => line.trim() !== '' && (JSON.parse(line) as { step: number }).step <= lastStep);
  await writeFile(file, kept.map((line) => `${line}\n`).join(''));
}

class ProgressDisplay {
  private bar: cliProgress.SingleBar | undefined;

  constructor(enabled: boolean, total: number, start: number) {
    if (!enabled) return;
    this.bar = new cliProgress.SingleBar(
      {
        format: 'train {bar} {value}/{total} steps | loss {loss} | {imagesPerSecond} img/s | ETA {eta_formatted}',
        stream: process.stderr,
        etaBuffer: 50,
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(total, start, { loss: '-', imagesPerSecond: '-' });
  }

  update(step: number, loss: number, imagesPerSecond: number): void {
    this.bar?.update(step, { loss: loss.toFixed(4), imagesPerSecond: imagesPerSecond.toFixed(1) });
  }

  stop(): void {
    this.bar?.stop();
  }
}

/** Trains SwAV on the shards in options.shardsDir and writes everything under options.outputDir. */
export async function runTraining(options: TrainOptions): Promise<TrainResult> {
  validateTrainOptions(options);
  const dataConfig: DataConfig = validateDataConfig({
    shardsDir: options.shardsDir,
    batchSize: options.batchSize,
    shuffleBuffer: options.shuffleBuffer,
    workers: options.workers,
    maxShortSide: options.maxShortSide,
    augment: options.augment,
  });
  const backend = await selectBackend(options.backend);

  const shards = await listShards(options.shardsDir);
  const samples = await countSamples(shards);
  const stepsPerEpoch = Math.floor(samples / options.batchSize);
  if (stepsPerEpoch === 0) {
    throw new Error(`The shards in ${options.shardsDir} hold ${samples} images, fewer than one batch of ${options.batchSize}; lower --batch-size`);
  }
  const totalSteps = stepsPerEpoch * options.epochs;
  const warmupSteps = Math.round(options.optimizer.warmupEpochs * stepsPerEpoch);

  const checkpointsDir = path.join(options.outputDir, 'checkpoints');
  const metricsFile = path.join(options.outputDir, 'metrics.jsonl');
  await mkdir(options.outputDir, { recursive: true });

  const model = new SwavModel(options.model, options.seed);
  const trainer = new SwavTrainer(model, new LarsSgd(options.optimizer), options.swav);
  let step = 0;
  let position: DataPosition = { epoch: 0, samplesConsumedInEpoch: 0 };

  const latest = options.resume ? await readLatestCheckpoint(checkpointsDir) : undefined;
  if (latest !== undefined) {
    checkResumable(latest.metadata, options, latest.folder);
    restoreTrainer(trainer, latest);
    step = latest.metadata.step;
    position = latest.metadata.position;
    await truncateMetrics(metricsFile, step);
    log.info({ checkpoint: latest.folder, step, epoch: position.epoch }, 'resuming from checkpoint');
  } else {
    await writeFile(metricsFile, '');
  }

  log.info(
    { backend: backend.choice, shards: shards.length, samples, stepsPerEpoch, totalSteps, batchSize: options.batchSize, output: options.outputDir },
    'training started',
  );

  const metadataAt = (): CheckpointMetadata => ({
    formatVersion: CHECKPOINT_FORMAT_VERSION,
    step,
    seed: options.seed,
    position,
    queueFilled: trainer.queueFilled,
    model: options.model,
    swav: options.swav,
    optimizer: options.optimizer,
    run: runSettings(options),
  });
  const checkpoint = async (): Promise<void> => {
    await saveCheckpoint(checkpointsDir, `step-${String(step).padStart(8, '0')}`, trainer, metadataAt());
    await pruneCheckpoints(checkpointsDir, options.keepCheckpoints);
  };

  const counters: DataCounters = { missingImage: 0, corrupt: 0 };
  const progress = new ProgressDisplay(options.progress ?? process.stderr.isTTY === true, totalSteps, step);
  const startedAt = performance.now();
  let lastLoss: number | undefined;
  let stoppedEarly = false;
  let smoothedRate = 0;

  const shouldStop = (): boolean =>
    (options.maxSteps !== undefined && step >= options.maxSteps) ||
    (options.maxSeconds !== undefined && (performance.now() - startedAt) / 1000 >= options.maxSeconds) ||
    options.signal?.aborted === true;

  try {
    while (position.epoch < options.epochs && !stoppedEarly) {
      const epoch = position.epoch;
      let stepStartedAt = performance.now();
      const batches = epochBatches(shards, dataConfig, options.seed, epoch, position.samplesConsumedInEpoch, counters);
      for await (const batch of batches) {
        const crops = batch.crops.map((values, c) => tf.tensor4d(values, [options.batchSize, batch.sizes[c]!, batch.sizes[c]!, 3]));
        const learningRate = learningRateAt(step, totalSteps, warmupSteps, options.optimizer);
        let result;
        try {
          result = trainer.step(crops, { step, epoch, learningRate });
        } catch (error) {
          if (error instanceof NonFiniteLossError) {
            const debugDir = await saveCheckpoint(options.outputDir, `debug-step-${step}`, trainer, metadataAt(), false);
            log.error({ step, loss: error.loss, debugCheckpoint: debugDir }, 'loss is not finite; saved the state before this step');
          }
          throw error;
        } finally {
          tf.dispose(crops);
        }

        step++;
        position = { epoch, samplesConsumedInEpoch: batch.samplesConsumed };
        lastLoss = result.loss;
        const now = performance.now();
        const imagesPerSecond = (options.batchSize * 1000) / (now - stepStartedAt);
        stepStartedAt = now;
        smoothedRate = smoothedRate === 0 ? imagesPerSecond : 0.9 * smoothedRate + 0.1 * imagesPerSecond;
        const metrics = {
          step,
          epoch,
          loss: result.loss,
          learningRate,
          imagesPerSecond,
          elapsedSeconds: (now - startedAt) / 1000,
          queueUsed: result.queueUsed,
          prototypesFrozen: result.prototypesFrozen,
        };
        await appendFile(metricsFile, `${JSON.stringify(metrics)}\n`);
        progress.update(step, result.loss, smoothedRate);

        if (shouldStop()) {
          stoppedEarly = true;
          await checkpoint();
          break;
        }
        if (step % options.checkpointEverySteps === 0) await checkpoint();
      }
      if (!stoppedEarly) {
        position = { epoch: epoch + 1, samplesConsumedInEpoch: 0 };
        await checkpoint();
        log.info({ epoch, step, loss: lastLoss, ...counters }, 'epoch finished');
      }
    }
  } finally {
    progress.stop();
  }

  // The encoder is exported on an early stop too, so that a time-bounded run can be evaluated.
  const encoderDir = path.join(options.outputDir, 'encoder');
  await exportEncoder(encoderDir, model, {
    inputSize: options.augment.globalSize,
    mean: options.augment.mean,
    std: options.augment.std,
    step,
  });
  if (stoppedEarly) {
    log.info({ step, loss: lastLoss, encoder: encoderDir }, 'training stopped early; run again with the same options to resume');
  } else {
    log.info({ step, loss: lastLoss, encoder: encoderDir }, 'training finished');
  }
  trainer.dispose();
  return { steps: step, totalSteps, stepsPerEpoch, lastLoss, stoppedEarly, encoderDir, counters };
}
