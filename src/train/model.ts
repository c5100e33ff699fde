/**
 * SwAV network: a small ResNet-style backbone, a projection head and the prototypes.
 *
 * Backbone: a 3x3 stem convolution, then one stage per entry of stageDepths. Each stage after
 * the first doubles the channels and halves the resolution. A stage is made of basic residual
 * blocks: 3x3 conv, batch norm, ReLU, 3x3 conv, batch norm, plus the shortcut (a 1x1 conv
 * where the shape changes), then ReLU. Global average pooling gives the features.
 * Head: linear, batch norm, ReLU, linear, then L2 normalisation, as in SwAV.
 * Prototypes: a bias-free linear layer [prototypes, embeddingDim]; the trainer L2-normalises
 * its rows before every step, so scores are cosine similarities.
 *
 * Parameters are plain tf.Variables in a named map, which keeps checkpoints and the optimiser
 * independent of tf.layers.
 */
import * as tf from '@tensorflow/tfjs';

import { Rng } from './rng.js';
import { InvalidOptionError, requireIntegerInRange } from './validate.js';

export interface ModelConfig {
  /** Channels of the input images (3 for RGB). */
  inputChannels: number;
  /** Channels of the stem and the first stage; each later stage doubles them. */
  width: number;
  /** Residual blocks per stage; the number of entries is the number of stages. */
  stageDepths: number[];
  /** Hidden units of the projection head. */
  hiddenDim: number;
  /** Dimension of the L2-normalised embedding. */
  embeddingDim: number;
  /** Number of prototypes K. */
  prototypes: number;
}

/** Defaults sized for CPU training on small images such as 32 x 32 digits. */
export const DEFAULT_MODEL_CONFIG: ModelConfig = {
  inputChannels: 3,
  width: 16,
  stageDepths: [1, 1, 1],
  hiddenDim: 128,
  embeddingDim: 64,
  prototypes: 100,
};

const BATCH_NORM_EPSILON = 1e-5;
/** Weight of the newest batch in the running statistics (PyTorch's momentum 0.1). */
const RUNNING_STATS_MOMENTUM = 0.1;

export function validateModelConfig(config: ModelConfig): ModelConfig {
  requireIntegerInRange('model.inputChannels', config.inputChannels, 1);
  requireIntegerInRange('model.width', config.width, 1);
  if (!Array.isArray(config.stageDepths) || config.stageDepths.length === 0) {
    throw new InvalidOptionError('model.stageDepths', 'a non-empty list of block counts', config.stageDepths);
  }
  config.stageDepths.forEach((depth, i) => requireIntegerInRange(`model.stageDepths[${i}]`, depth, 1));
  requireIntegerInRange('model.hiddenDim', config.hiddenDim, 1);
  requireIntegerInRange('model.embeddingDim', config.embeddingDim, 1);
  requireIntegerInRange('model.prototypes', config.prototypes, 1);
  return config;
}

interface BatchNormNames {
  gamma: string;
  beta: string;
  runningMean: string;
  runningVariance: string;
}

interface BlockSpec {
  prefix: string;
  inChannels: number;
  outChannels: number;
  stride: number;
}

/** Batch moments recorded during a training forward pass, applied to the running statistics afterwards. */
export type MomentsRecord = Map<string, { mean: tf.Tensor1D; variance: tf.Tensor1D; count: number }>;

export class SwavModel {
  readonly config: ModelConfig;
  /** Every tensor of the model: trainable parameters and batch-norm running statistics. */
  readonly variables = new Map<string, tf.Variable>();
  private readonly blocks: BlockSpec[] = [];

  constructor(config: ModelConfig, seed: number) {
    this.config = validateModelConfig({ ...config, stageDepths: [...config.stageDepths] });
    const rng = new Rng(seed);
    const { inputChannels, width, stageDepths, hiddenDim, embeddingDim, prototypes } = this.config;

    this.addConv(rng, 'stem', 3, inputChannels, width);
    let channels = width;
    stageDepths.forEach((depth, stage) => {
      const outChannels = width * 2 ** stage;
      for (let b = 0; b < depth; b++) {
        const block: BlockSpec = {
          prefix: `stage${stage + 1}.block${b + 1}`,
          inChannels: channels,
          outChannels,
          stride: stage > 0 && b === 0 ? 2 : 1,
        };
        this.addConv(rng, `${block.prefix}.conv1`, 3, block.inChannels, outChannels);
        this.addConv(rng, `${block.prefix}.conv2`, 3, outChannels, outChannels);
        if (block.stride !== 1 || block.inChannels !== outChannels) {
          this.addConv(rng, `${block.prefix}.shortcut`, 1, block.inChannels, outChannels);
        }
        this.blocks.push(block);
        channels = outChannels;
      }
    });

    this.addLinear(rng, 'head.linear1', channels, hiddenDim, true);
    this.addBatchNorm('head.bn1', hiddenDim);
    this.addLinear(rng, 'head.linear2', hiddenDim, embeddingDim, true);
    this.addLinear(rng, 'prototypes', embeddingDim, prototypes, false);
    this.normalizePrototypes();
  }

  /** Channels of the backbone's pooled features. */
  get featureDim(): number {
    return this.config.width * 2 ** (this.config.stageDepths.length - 1);
  }

  /** Names of the parameters the optimiser updates (everything except running statistics). */
  trainableNames(): string[] {
    return [...this.variables.keys()].filter((name) => this.variables.get(name)!.trainable);
  }

  /** Names of the encoder's tensors: the backbone, without head and prototypes. */
  encoderNames(): string[] {
    return [...this.variables.keys()].filter((name) => !name.startsWith('head.') && name !== 'prototypes.weight');
  }

  variable(name: string): tf.Variable {
    const variable = this.variables.get(name);
    if (variable === undefined) {
      throw new Error(`Model has no variable named ${name}`);
    }
    return variable;
  }

  private addVariable(name: string, values: Float32Array, shape: number[], trainable: boolean): void {
    // Variables stay unnamed, because TensorFlow.js names are global and two models may coexist.
    const initial = tf.tensor(values, shape);
    this.variables.set(name, tf.variable(initial, trainable));
    initial.dispose();
  }

  /** He-normal initialisation (std sqrt(2 / fan-in)) for a conv followed by ReLU, plus its batch norm. */
  private addConv(rng: Rng, prefix: string, size: number, inChannels: number, outChannels: number): void {
    const count = size * size * inChannels * outChannels;
    const std = Math.sqrt(2 / (size * size * inChannels));
    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) values[i] = rng.normal() * std;
    this.addVariable(`${prefix}.weight`, values, [size, size, inChannels, outChannels], true);
    this.addBatchNorm(`${prefix}.bn`, outChannels);
  }

  /** Uniform initialisation in +-1/sqrt(fan-in), as PyTorch's nn.Linear. Weight shape: [in, out]. */
  private addLinear(rng: Rng, prefix: string, inDim: number, outDim: number, bias: boolean): void {
    const bound = 1 / Math.sqrt(inDim);
    const weight = new Float32Array(inDim * outDim);
    for (let i = 0; i < weight.length; i++) weight[i] = rng.uniform(-bound, bound);
    if (prefix === 'prototypes') {
      // Prototypes are stored as [K, D] so that each row is one prototype.
      this.addVariable(`${prefix}.weight`, weight, [outDim, inDim], true);
      return;
    }
    this.addVariable(`${prefix}.weight`, weight, [inDim, outDim], true);
    if (bias) {
      const biasValues = new Float32Array(outDim);
      for (let i = 0; i < outDim; i++) biasValues[i] = rng.uniform(-bound, bound);
      this.addVariable(`${prefix}.bias`, biasValues, [outDim], true);
    }
  }

  private addBatchNorm(prefix: string, channels: number): void {
    this.addVariable(`${prefix}.gamma`, new Float32Array(channels).fill(1), [channels], true);
    this.addVariable(`${prefix}.beta`, new Float32Array(channels), [channels], true);
    this.addVariable(`${prefix}.runningMean`, new Float32Array(channels), [channels], false);
    this.addVariable(`${prefix}.runningVariance`, new Float32Array(channels).fill(1), [channels], false);
  }

  private batchNormNames(prefix: string): BatchNormNames {
    return {
      gamma: `${prefix}.gamma`,
      beta: `${prefix}.beta`,
      runningMean: `${prefix}.runningMean`,
      runningVariance: `${prefix}.runningVariance`,
    };
  }

  /**
   * Applies batch norm over every axis but the last. In training the batch moments are used
   * and recorded in `record` (kept tensors the caller must dispose); otherwise the running ones.
   */
  private batchNorm<T extends tf.Tensor>(x: T, prefix: string, record: MomentsRecord | undefined): T {
    const names = this.batchNormNames(prefix);
    const gamma = this.variable(names.gamma) as tf.Tensor1D;
    const beta = this.variable(names.beta) as tf.Tensor1D;
    if (record === undefined) {
      return tf.batchNorm(x, this.variable(names.runningMean), this.variable(names.runningVariance), beta, gamma, BATCH_NORM_EPSILON) as T;
    }
    const { y, mean, variance } = batchNormTraining(x, gamma, beta);
    const count = x.size / (x.shape[x.rank - 1] as number);
    record.set(`${prefix}#${record.size}`, { mean, variance, count });
    return y;
  }

  private convBn(x: tf.Tensor4D, prefix: string, stride: number, record: MomentsRecord | undefined): tf.Tensor4D {
    const y = tf.conv2d(x, this.variable(`${prefix}.weight`) as tf.Tensor4D, stride, 'same');
    return this.batchNorm(y, `${prefix}.bn`, record);
  }

  /** Maps images [N, H, W, C] to pooled features [N, featureDim]. */
  features(images: tf.Tensor4D, record?: MomentsRecord): tf.Tensor2D {
    return tf.tidy(() => {
      let x = tf.relu(this.convBn(images, 'stem', 1, record));
      for (const block of this.blocks) {
        const residual = tf.relu(this.convBn(x, `${block.prefix}.conv1`, block.stride, record));
        const branch = this.convBn(residual, `${block.prefix}.conv2`, 1, record);
        const shortcut = this.variables.has(`${block.prefix}.shortcut.weight`)
          ? this.convBn(x, `${block.prefix}.shortcut`, block.stride, record)
          : x;
        x = tf.relu(tf.add(branch, shortcut)) as tf.Tensor4D;
      }
      // Global average pooling: [N, H, W, C] -> [N, C].
      return tf.mean(x, [1, 2]) as tf.Tensor2D;
    });
  }

  /** Maps features [N, featureDim] to L2-normalised embeddings [N, embeddingDim]. */
  project(features: tf.Tensor2D, record?: MomentsRecord): tf.Tensor2D {
    return tf.tidy(() => {
      let h = tf.add(tf.matMul(features, this.variable('head.linear1.weight')), this.variable('head.linear1.bias')) as tf.Tensor2D;
      h = tf.relu(this.batchNorm(h, 'head.bn1', record));
      const z = tf.add(tf.matMul(h, this.variable('head.linear2.weight')), this.variable('head.linear2.bias')) as tf.Tensor2D;
      return l2Normalize(z);
    });
  }

  /** Cosine scores [N, K] of embeddings [N, D] against the (normalised) prototypes [K, D]. */
  scores(embeddings: tf.Tensor2D): tf.Tensor2D {
    return tf.matMul(embeddings, this.variable('prototypes.weight'), false, true);
  }

  /** Rescales each prototype row to unit length, outside any gradient. */
  normalizePrototypes(): void {
    const prototypes = this.variable('prototypes.weight');
    const normalized = tf.tidy(() => l2Normalize(prototypes as tf.Tensor2D));
    prototypes.assign(normalized);
    normalized.dispose();
  }

  /**
   * Moves the running statistics towards the batch moments recorded during a training step,
   * one update per forward pass as in PyTorch, and disposes the record.
   */
  updateRunningStatistics(record: MomentsRecord): void {
    for (const [key, moments] of record) {
      const prefix = key.slice(0, key.indexOf('#'));
      const names = this.batchNormNames(prefix);
      const runningMean = this.variable(names.runningMean);
      const runningVariance = this.variable(names.runningVariance);
      const [mean, variance] = tf.tidy(() => {
        // Unbiased variance for the running estimate, as PyTorch does.
        const count = moments.count;
        const unbiased = count > 1 ? tf.mul(moments.variance, count / (count - 1)) : moments.variance;
        return [
          tf.add(tf.mul(runningMean, 1 - RUNNING_STATS_MOMENTUM), tf.mul(moments.mean, RUNNING_STATS_MOMENTUM)),
          tf.add(tf.mul(runningVariance, 1 - RUNNING_STATS_MOMENTUM), tf.mul(unbiased, RUNNING_STATS_MOMENTUM)),
        ];
      });
      runningMean.assign(mean as tf.Tensor);
      runningVariance.assign(variance as tf.Tensor);
      tf.dispose([mean as tf.Tensor, variance as tf.Tensor, moments.mean, moments.variance]);
    }
    record.clear();
  }

  dispose(): void {
    for (const variable of this.variables.values()) variable.dispose();
    this.variables.clear();
  }
}

/** Divides each row by its L2 norm (with a floor of 1e-12 so zero rows stay finite). */
export function l2Normalize(x: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => tf.div(x, tf.maximum(tf.norm(x, 'euclidean', 1, true), 1e-12)));
}

/**
 * Batch norm with batch statistics over every axis but the last, with the gradient written out
 * (TensorFlow.js 4.22 derives tf.batchNorm's gradient through tf.tile, which took about a third
 * of a training step on the WebAssembly backend). With xHat = (x - mean) / sqrt(variance + eps)
 * and M values per channel:
 *   dGamma = sum(dy * xHat), dBeta = sum(dy),
 *   dx = gamma / sqrt(variance + eps) / M * (M * dy - dBeta - xHat * dGamma).
 * Returns the output and the batch moments [C]; the moments are kept (outside any tidy) and
 * carry no gradient.
 */
function batchNormTraining<T extends tf.Tensor>(x: T, gamma: tf.Tensor1D, beta: tf.Tensor1D): { y: T; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  const axes = Array.from({ length: x.rank - 1 }, (_, i) => i);
  const count = x.size / (x.shape[x.rank - 1] as number);
  let mean: tf.Tensor1D | undefined;
  let variance: tf.Tensor1D | undefined;

  const normalize = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, scale, offset] = args as [tf.Tensor, tf.Tensor1D, tf.Tensor1D];
    const save = args[3] as tf.GradSaveFunc;
    const moments = tf.moments(input, axes);
    mean = tf.keep(moments.mean) as tf.Tensor1D;
    variance = tf.keep(moments.variance) as tf.Tensor1D;
    const inverseStd = tf.rsqrt(tf.add(moments.variance, BATCH_NORM_EPSILON));
    const xHat = tf.mul(tf.sub(input, moments.mean), inverseStd);
    save([xHat, inverseStd, scale]);
    return {
      value: tf.add(tf.mul(xHat, scale), offset),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedXHat, savedInverseStd, savedScale] = saved as [tf.Tensor, tf.Tensor1D, tf.Tensor1D];
        const dBeta = tf.sum(dy, axes);
        const dGamma = tf.sum(tf.mul(dy, savedXHat), axes);
        const factor = tf.div(tf.mul(savedScale, savedInverseStd), count);
        const dx = tf.mul(factor, tf.sub(tf.sub(tf.mul(dy, count), dBeta), tf.mul(savedXHat, dGamma)));
        return [dx, dGamma, dBeta];
      },
    };
  });

  const y = normalize(x, gamma, beta) as T;
  return { y, mean: mean as tf.Tensor1D, variance: variance as tf.Tensor1D };
}
