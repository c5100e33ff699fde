/**
 * SwAV's assignment and loss (Caron et al., "Unsupervised Learning of Visual Features by
 * Contrasting Cluster Assignments", NeurIPS 2020), in two forms: plain float64 arrays for
 * checking and tests, and TensorFlow.js tensors for training.
 *
 * Sinkhorn-Knopp as the paper runs it: Q = exp(scores / epsilon) as K x B, divided by its
 * sum, then each iteration scales the rows to sum 1/K and the columns to sum 1/B, and the
 * result is multiplied by B so that each sample's assignment sums to 1. Both forms run the
 * same steps in the log domain: every normalisation becomes a log-sum-exp, which subtracts
 * the maximum before exponentiating. The result is the same in exact arithmetic. No epsilon
 * can overflow, although exp(1 / epsilon) overflows float32 below epsilon of about 0.0113 for
 * cosine scores in [-1, 1]. A prototype whose scores all underflow exp() also keeps a finite
 * row instead of 0 / 0.
 */
import * as tf from '@tensorflow/tfjs';

import { InvalidOptionError, requireIntegerInRange, requirePositiveNumber } from './validate.js';

export interface SinkhornOptions {
  /** Entropy regularisation; smaller values give sharper assignments (SwAV: 0.05). */
  epsilon: number;
  /** Number of row-and-column normalisation rounds (SwAV: 3). */
  iterations: number;
}

export interface SwavLossOptions extends SinkhornOptions {
  /** Softmax temperature of the predicted crop's scores (SwAV: 0.1). */
  temperature: number;
  /** Indices of the crops whose assignments are the targets (SwAV: [0, 1], the global crops). */
  cropsForAssign: number[];
}

function validateSinkhornOptions(options: SinkhornOptions): void {
  requirePositiveNumber('epsilon', options.epsilon);
  requireIntegerInRange('iterations', options.iterations, 1);
}

function validateCropsForAssign(cropsForAssign: unknown, cropCount: number): number[] {
  const valid =
    Array.isArray(cropsForAssign) &&
    cropsForAssign.length > 0 &&
    cropsForAssign.every((c) => Number.isInteger(c) && c >= 0 && c < cropCount) &&
    new Set(cropsForAssign).size === cropsForAssign.length;
  if (!valid) {
    throw new InvalidOptionError(
      'cropsForAssign',
      `a non-empty list of distinct crop indices from 0 to ${cropCount - 1}`,
      cropsForAssign,
    );
  }
  return cropsForAssign as number[];
}

/** Checks that `scores` is a non-empty, rectangular matrix of finite numbers; returns [rows, columns]. */
function validateMatrix(option: string, scores: unknown): [number, number] {
  if (!Array.isArray(scores) || scores.length === 0 || !Array.isArray(scores[0]) || scores[0].length === 0) {
    throw new InvalidOptionError(option, 'a non-empty batch x prototypes matrix', scores);
  }
  const columns = (scores[0] as unknown[]).length;
  scores.forEach((row: unknown, i) => {
    if (!Array.isArray(row) || row.length !== columns) {
      throw new InvalidOptionError(`${option}[${i}]`, `a row of ${columns} numbers`, row);
    }
    row.forEach((value: unknown, j) => {
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        throw new InvalidOptionError(`${option}[${i}][${j}]`, 'a finite number', value);
      }
    });
  });
  return [scores.length, columns];
}

/** Identity whose gradient is zero, so that targets built from the scores stay constants. */
export const stopGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: tf.clone(args[0] as tf.Tensor),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
})) as <T extends tf.Tensor>(x: T) => T;

function logSumExp(values: number[]): number {
  let max = Number.NEGATIVE_INFINITY;
  for (const v of values) {
    if (v > max) max = v;
  }
  if (max === Number.NEGATIVE_INFINITY) {
    return max;
  }
  let sum = 0;
  for (const v of values) {
    sum += Math.exp(v - max);
  }
  return max + Math.log(sum);
}

/**
 * Computes SwAV's equipartitioned soft assignment of a batch to prototypes in float64.
 * Takes and returns batch x prototypes; each returned row sums to 1.
 */
export function sinkhornKnopp(scores: number[][], options: SinkhornOptions): number[][] {
  validateSinkhornOptions(options);
  const [batch, prototypes] = validateMatrix('scores', scores);
  const { epsilon, iterations } = options;

  // logQ is K x B, the transpose of scores, as the algorithm is written.
  const logQ: number[][] = [];
  for (let k = 0; k < prototypes; k++) {
    logQ.push(scores.map((row) => (row[k] as number) / epsilon));
  }
  const logTotal = logSumExp(logQ.map((row) => logSumExp(row)));
  for (const row of logQ) {
    for (let b = 0; b < batch; b++) row[b] = (row[b] as number) - logTotal;
  }

  const logK = Math.log(prototypes);
  const logB = Math.log(batch);
  for (let it = 0; it < iterations; it++) {
    for (const row of logQ) {
      const shift = logSumExp(row) + logK;
      for (let b = 0; b < batch; b++) row[b] = (row[b] as number) - shift;
    }
    for (let b = 0; b < batch; b++) {
      const shift = logSumExp(logQ.map((row) => row[b] as number)) + logB;
      for (const row of logQ) row[b] = (row[b] as number) - shift;
    }
  }

  return Array.from({ length: batch }, (_, b) => logQ.map((row) => Math.exp((row[b] as number) + logB)));
}

function logSoftmax(values: number[], temperature: number): number[] {
  const scaled = values.map((v) => v / temperature);
  const shift = logSumExp(scaled);
  return scaled.map((v) => v - shift);
}

/**
 * Computes SwAV's swapped-prediction loss in float64 from crops x batch x prototypes scores.
 * For each assignment crop, the targets are its Sinkhorn assignments and the predictions are
 * softmax(scores / temperature) of every other crop; the cross-entropies are averaged over the
 * batch, over the other crops, then over the assignment crops.
 */
export function swavLoss(cropScores: number[][][], options: SwavLossOptions): number {
  validateSinkhornOptions(options);
  requirePositiveNumber('temperature', options.temperature);
  if (!Array.isArray(cropScores) || cropScores.length < 2) {
    throw new InvalidOptionError('cropScores', 'scores of at least 2 crops', cropScores);
  }
  const shape = validateMatrix('cropScores[0]', cropScores[0]);
  cropScores.forEach((scores, c) => {
    const [rows, columns] = validateMatrix(`cropScores[${c}]`, scores);
    if (rows !== shape[0] || columns !== shape[1]) {
      throw new InvalidOptionError(`cropScores[${c}]`, `a ${shape[0]} x ${shape[1]} matrix like crop 0`, `${rows} x ${columns}`);
    }
  });
  const cropsForAssign = validateCropsForAssign(options.cropsForAssign, cropScores.length);

  let total = 0;
  for (const assignCrop of cropsForAssign) {
    const targets = sinkhornKnopp(cropScores[assignCrop] as number[][], options);
    let cropLoss = 0;
    cropScores.forEach((scores, c) => {
      if (c === assignCrop) return;
      let crossEntropy = 0;
      scores.forEach((row, b) => {
        const logProbabilities = logSoftmax(row, options.temperature);
        const target = targets[b] as number[];
        logProbabilities.forEach((logP, k) => {
          crossEntropy -= (target[k] as number) * logP;
        });
      });
      cropLoss += crossEntropy / scores.length;
    });
    total += cropLoss / (cropScores.length - 1);
  }
  return total / cropsForAssign.length;
}

/**
 * Tensor form of sinkhornKnopp, in float32. Takes scores [B, K] and returns assignments
 * [B, K] with rows summing to 1. The result carries no gradient: SwAV's targets are constants.
 */
export function sinkhornTensor(scores: tf.Tensor2D, options: SinkhornOptions): tf.Tensor2D {
  validateSinkhornOptions(options);
  if (scores.rank !== 2) {
    throw new InvalidOptionError('scores', 'a rank-2 tensor [batch, prototypes]', `shape [${scores.shape.join(', ')}]`);
  }
  const [batch, prototypes] = scores.shape;
  return tf.tidy(() => {
    // logQ: [K, B]
    let logQ: tf.Tensor = tf.transpose(tf.div(scores, options.epsilon));
    logQ = tf.sub(logQ, tf.logSumExp(logQ));
    for (let it = 0; it < options.iterations; it++) {
      // Rows: sum over the batch axis, [K, 1].
      logQ = tf.sub(logQ, tf.add(tf.logSumExp(logQ, 1, true), Math.log(prototypes)));
      // Columns: sum over the prototype axis, [1, B].
      logQ = tf.sub(logQ, tf.add(tf.logSumExp(logQ, 0, true), Math.log(batch)));
    }
    // [B, K]
    return tf.exp(tf.add(tf.transpose(logQ), Math.log(batch))) as tf.Tensor2D;
  });
}

/**
 * Computes the swapped-prediction loss from each crop's scores [B, K] and the targets [B, K]
 * of each assignment crop (same order as cropsForAssign). Differentiable in cropScores.
 * Targets come from sinkhornTensor, possibly over a batch extended by a queue.
 */
export function swappedPredictionLoss(
  cropScores: tf.Tensor2D[],
  targets: tf.Tensor2D[],
  cropsForAssign: number[],
  temperature: number,
): tf.Scalar {
  requirePositiveNumber('temperature', temperature);
  validateCropsForAssign(cropsForAssign, cropScores.length);
  if (cropScores.length < 2) {
    throw new InvalidOptionError('cropScores', 'scores of at least 2 crops', cropScores.length);
  }
  if (targets.length !== cropsForAssign.length) {
    throw new InvalidOptionError('targets', `${cropsForAssign.length} tensors, one per assignment crop`, targets.length);
  }
  return tf.tidy(() => {
    // Each entry: [B, K] log-probabilities.
    const logProbabilities = cropScores.map((scores) => tf.logSoftmax(tf.div(scores, temperature)));
    let total: tf.Scalar = tf.scalar(0);
    cropsForAssign.forEach((assignCrop, i) => {
      const target = stopGradient(targets[i] as tf.Tensor2D);
      let cropLoss: tf.Scalar = tf.scalar(0);
      logProbabilities.forEach((logP, c) => {
        if (c === assignCrop) return;
        // Mean over the batch of -sum_k q log p.
        cropLoss = tf.add(cropLoss, tf.neg(tf.mean(tf.sum(tf.mul(target, logP), 1))));
      });
      total = tf.add(total, tf.div(cropLoss, cropScores.length - 1));
    });
    return tf.div(total, cropsForAssign.length);
  });
}

/** Tensor form of swavLoss: crops x [B, K] scores in, scalar loss out, differentiable in the scores. */
export function swavLossTensor(cropScores: tf.Tensor2D[], options: SwavLossOptions): tf.Scalar {
  validateSinkhornOptions(options);
  validateCropsForAssign(options.cropsForAssign, cropScores.length);
  return tf.tidy(() => {
    const targets = options.cropsForAssign.map((c) => sinkhornTensor(stopGradient(cropScores[c] as tf.Tensor2D), options));
    return swappedPredictionLoss(cropScores, targets, options.cropsForAssign, options.temperature);
  });
}
