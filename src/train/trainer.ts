/**
 * One SwAV training step on a multi-crop batch: forward pass per crop resolution, Sinkhorn
 * targets for the assignment crops (optionally over a queue of past embeddings), swapped
 * prediction loss, LARS-SGD update, running batch-norm statistics and queue update.
 */
import * as tf from '@tensorflow/tfjs';

import { SwavModel, type MomentsRecord } from './model.js';
import { LarsSgd } from './optimizer.js';
import { sinkhornTensor, stopGradient, swappedPredictionLoss, type SwavLossOptions } from './swav-math.js';
import { InvalidOptionError, requireIntegerInRange, requireNonNegativeNumber } from './validate.js';

export interface SwavConfig extends SwavLossOptions {
  /** Length of the queue of past embeddings per assignment crop; 0 turns the queue off. */
  queueLength: number;
  /** Epoch (0-based) from which the queue is filled; it is used once full. */
  queueStartEpoch: number;
  /** Steps during which the prototypes get no updates, which helps against early collapse. */
  freezePrototypesSteps: number;
}

export const DEFAULT_SWAV_CONFIG: SwavConfig = {
  epsilon: 0.05,
  iterations: 3,
  temperature: 0.1,
  cropsForAssign: [0, 1],
  queueLength: 0,
  queueStartEpoch: 15,
  freezePrototypesSteps: 0,
};

export function validateSwavConfig(config: SwavConfig, batchSize: number): SwavConfig {
  requireIntegerInRange('swav.queueLength', config.queueLength, 0);
  requireIntegerInRange('swav.queueStartEpoch', config.queueStartEpoch, 0);
  requireNonNegativeNumber('swav.freezePrototypesSteps', config.freezePrototypesSteps);
  if (config.queueLength % batchSize !== 0) {
    // The queue shifts by whole batches, as in SwAV.
    throw new InvalidOptionError('swav.queueLength', `a multiple of the batch size ${batchSize}`, config.queueLength);
  }
  return config;
}

/** Thrown when the loss of a step is NaN or infinite; the step's update was not applied. */
export class NonFiniteLossError extends Error {
  constructor(
    readonly step: number,
    readonly loss: number,
  ) {
    super(
      `Training stopped: the loss at step ${step} is ${loss}. ` +
        'Try a lower learning rate (--lr), a larger epsilon, or check the input images for constant or broken samples.',
    );
    this.name = 'NonFiniteLossError';
  }
}

export interface StepContext {
  /** 0-based global step. */
  step: number;
  epoch: number;
  learningRate: number;
}

export interface StepResult {
  loss: number;
  queueUsed: boolean;
  prototypesFrozen: boolean;
}

/** Crop tensors [B, S, S, C], global crops first; consecutive crops of one size share a forward pass. */
export type CropTensors = tf.Tensor4D[];

export class SwavTrainer {
  readonly model: SwavModel;
  readonly optimizer: LarsSgd;
  readonly config: SwavConfig;
  /** Past embeddings per assignment crop, newest first: [queueLength, D] each. */
  readonly queue = new Map<string, tf.Variable>();
  /** How many rows of the queue hold embeddings (it is used once this reaches queueLength). */
  queueFilled = 0;

  constructor(model: SwavModel, optimizer: LarsSgd, config: SwavConfig) {
    this.model = model;
    this.optimizer = optimizer;
    this.config = config;
  }

  /** Creates the queue (zeros) if the queue is on and its start epoch has come. */
  private ensureQueue(epoch: number): void {
    if (this.config.queueLength === 0 || epoch < this.config.queueStartEpoch || this.queue.size > 0) {
      return;
    }
    for (let i = 0; i < this.config.cropsForAssign.length; i++) {
      const zeros = tf.zeros([this.config.queueLength, this.model.config.embeddingDim]);
      this.queue.set(`queue.${i}`, tf.variable(zeros, false));
      zeros.dispose();
    }
    this.queueFilled = 0;
  }

  /** Embeddings [nCrops * B, D], computed with one forward pass per run of equally sized crops. */
  private embed(crops: CropTensors, record: MomentsRecord): tf.Tensor2D {
    const features: tf.Tensor2D[] = [];
    let start = 0;
    while (start < crops.length) {
      let end = start + 1;
      while (end < crops.length && sameSize(crops[end] as tf.Tensor4D, crops[start] as tf.Tensor4D)) end++;
      const group = crops.slice(start, end);
      const images = group.length === 1 ? (group[0] as tf.Tensor4D) : tf.concat(group, 0);
      features.push(this.model.features(images, record));
      start = end;
    }
    return this.model.project(features.length === 1 ? (features[0] as tf.Tensor2D) : tf.concat(features, 0), record);
  }

  /** Sinkhorn targets [B, K] for one assignment crop, with queue rows prepended when the queue is full. */
  private targets(cropScores: tf.Tensor2D, queueIndex: number, useQueue: boolean): tf.Tensor2D {
    const batch = cropScores.shape[0];
    let scores = stopGradient(cropScores);
    if (useQueue) {
      const queued = this.queue.get(`queue.${queueIndex}`) as tf.Variable;
      const queueScores = stopGradient(this.model.scores(queued as tf.Tensor2D));
      scores = tf.concat([queueScores, scores], 0);
    }
    const assignments = sinkhornTensor(scores, this.config);
    return useQueue ? tf.slice(assignments, [assignments.shape[0] - batch, 0], [batch, -1]) : assignments;
  }

  /** Runs one training step. Throws NonFiniteLossError, before any update, if the loss is not finite. */
  step(crops: CropTensors, context: StepContext): StepResult {
    validateCrops(crops);
    const batch = (crops[0] as tf.Tensor4D).shape[0];
    this.model.normalizePrototypes();
    this.ensureQueue(context.epoch);
    const useQueue = this.queue.size > 0 && this.queueFilled >= this.config.queueLength;
    const prototypesFrozen = context.step < this.config.freezePrototypesSteps;

    const record: MomentsRecord = new Map();
    const assignEmbeddings: tf.Tensor2D[] = [];
    const names = this.model.trainableNames();
    const variables = names.map((name) => this.model.variable(name));

    const { value, grads } = tf.variableGrads(() => {
      const embeddings = this.embed(crops, record);
      const scores = this.model.scores(embeddings);
      // One [B, K] block per crop.
      const cropScores = crops.map((_, c) => tf.slice(scores, [c * batch, 0], [batch, -1]) as tf.Tensor2D);
      const targets = this.config.cropsForAssign.map((c, i) => {
        assignEmbeddings.push(tf.keep(tf.slice(embeddings, [c * batch, 0], [batch, -1])));
        return this.targets(cropScores[c] as tf.Tensor2D, i, useQueue);
      });
      return swappedPredictionLoss(cropScores, targets, this.config.cropsForAssign, this.config.temperature);
    }, variables);

    const loss = (value.dataSync() as Float32Array)[0] as number;
    value.dispose();
    if (!Number.isFinite(loss)) {
      tf.dispose(Object.values(grads));
      tf.dispose(assignEmbeddings);
      for (const moments of record.values()) tf.dispose([moments.mean, moments.variance]);
      throw new NonFiniteLossError(context.step, loss);
    }

    // variableGrads keys gradients by the variables' TensorFlow.js names.
    const byName: Record<string, tf.Tensor> = {};
    names.forEach((name, i) => {
      const gradient = grads[(variables[i] as tf.Variable).name];
      if (gradient === undefined) return;
      if (prototypesFrozen && name === 'prototypes.weight') {
        gradient.dispose();
        return;
      }
      byName[name] = gradient;
    });
    this.optimizer.apply(this.model.variables, byName, context.learningRate);
    tf.dispose(Object.values(byName));
    this.model.updateRunningStatistics(record);
    this.pushToQueue(assignEmbeddings);

    return { loss, queueUsed: useQueue, prototypesFrozen };
  }

  /** Shifts each queue by one batch and puts the newest embeddings in front; disposes them. */
  private pushToQueue(embeddings: tf.Tensor2D[]): void {
    if (this.queue.size === 0) {
      tf.dispose(embeddings);
      return;
    }
    embeddings.forEach((current, i) => {
      const queued = this.queue.get(`queue.${i}`) as tf.Variable;
      const shifted = tf.tidy(() => {
        const kept = tf.slice(queued, [0, 0], [this.config.queueLength - current.shape[0], -1]);
        return tf.concat([current, kept], 0);
      });
      queued.assign(shifted);
      shifted.dispose();
    });
    this.queueFilled = Math.min(this.queueFilled + (embeddings[0] as tf.Tensor2D).shape[0], this.config.queueLength);
    tf.dispose(embeddings);
  }

  dispose(): void {
    this.model.dispose();
    this.optimizer.dispose();
    for (const queued of this.queue.values()) queued.dispose();
    this.queue.clear();
  }
}

function sameSize(a: tf.Tensor4D, b: tf.Tensor4D): boolean {
  return a.shape[1] === b.shape[1] && a.shape[2] === b.shape[2];
}

function validateCrops(crops: CropTensors): void {
  if (crops.length < 2) {
    throw new Error(`A SwAV step needs at least 2 crops per image, received ${crops.length}`);
  }
  const batch = (crops[0] as tf.Tensor4D).shape[0];
  crops.forEach((crop, c) => {
    if (crop.rank !== 4 || crop.shape[0] !== batch) {
      throw new Error(`Crop ${c} has shape [${crop.shape.join(', ')}], expected [${batch}, height, width, channels]`);
    }
  });
}
