/**
 * SGD with momentum, weight decay and LARS scaling, and SwAV's learning-rate schedule.
 *
 * LARS (You et al., "Large Batch Training of Convolutional Networks", 2017), in the form
 * SwAV uses (without clipping): for each tensor w with gradient g,
 *   g' = (g + weightDecay * w) * trust * |w| / (|g| + weightDecay * |w|)
 * when both norms are positive, else g' = g + weightDecay * w; then the PyTorch momentum
 * update buffer = momentum * buffer + g', w -= lr * buffer. Every tensor is scaled this way,
 * biases and batch-norm parameters included, as in SwAV.
 */
import * as tf from '@tensorflow/tfjs';

import { requireIntegerInRange, requireNonNegativeNumber, requirePositiveNumber, InvalidOptionError } from './validate.js';

export interface OptimizerConfig {
  /** Learning rate after warm-up (SwAV's small-batch recipe: 0.6). */
  baseLr: number;
  /** Learning rate at the end of the cosine decay. */
  finalLr: number;
  /** Learning rate at step 0 of the linear warm-up. */
  warmupStartLr: number;
  /** Warm-up length in epochs (may be fractional). */
  warmupEpochs: number;
  momentum: number;
  weightDecay: number;
  /** LARS trust coefficient; 0 turns the LARS scaling off. */
  trustCoefficient: number;
}

export const DEFAULT_OPTIMIZER_CONFIG: OptimizerConfig = {
  baseLr: 0.6,
  finalLr: 0.0006,
  warmupStartLr: 0,
  warmupEpochs: 0,
  momentum: 0.9,
  weightDecay: 1e-6,
  trustCoefficient: 0.001,
};

export function validateOptimizerConfig(config: OptimizerConfig): OptimizerConfig {
  requirePositiveNumber('optimizer.baseLr', config.baseLr);
  requireNonNegativeNumber('optimizer.finalLr', config.finalLr);
  requireNonNegativeNumber('optimizer.warmupStartLr', config.warmupStartLr);
  requireNonNegativeNumber('optimizer.warmupEpochs', config.warmupEpochs);
  requireNonNegativeNumber('optimizer.weightDecay', config.weightDecay);
  requireNonNegativeNumber('optimizer.trustCoefficient', config.trustCoefficient);
  if (!(config.momentum >= 0 && config.momentum < 1)) {
    throw new InvalidOptionError('optimizer.momentum', 'a number from 0 up to (not including) 1', config.momentum);
  }
  return config;
}

/**
 * Computes the learning rate at a 0-based step: linear from warmupStartLr to baseLr over the
 * warm-up steps, then cosine from baseLr to finalLr at totalSteps.
 */
export function learningRateAt(step: number, totalSteps: number, warmupSteps: number, config: OptimizerConfig): number {
  requireIntegerInRange('totalSteps', totalSteps, 1);
  if (step < warmupSteps) {
    return config.warmupStartLr + ((config.baseLr - config.warmupStartLr) * step) / warmupSteps;
  }
  const decaySteps = Math.max(totalSteps - warmupSteps, 1);
  const progress = Math.min((step - warmupSteps) / decaySteps, 1);
  return config.finalLr + 0.5 * (config.baseLr - config.finalLr) * (1 + Math.cos(Math.PI * progress));
}

export class LarsSgd {
  readonly config: OptimizerConfig;
  /** Momentum buffers, by variable name; created on first use. */
  readonly buffers = new Map<string, tf.Variable>();

  constructor(config: OptimizerConfig) {
    this.config = validateOptimizerConfig({ ...config });
  }

  /** Applies one update to each named variable from its gradient. Gradients are not disposed. */
  apply(variables: Map<string, tf.Variable>, gradients: Record<string, tf.Tensor>, learningRate: number): void {
    const { momentum, weightDecay, trustCoefficient } = this.config;
    for (const [name, gradient] of Object.entries(gradients)) {
      const variable = variables.get(name);
      if (variable === undefined) {
        throw new Error(`Gradient for unknown variable ${name}`);
      }
      let buffer = this.buffers.get(name);
      if (buffer === undefined) {
        const zeros = tf.zerosLike(variable);
        buffer = tf.variable(zeros, false);
        zeros.dispose();
        this.buffers.set(name, buffer);
      }
      const currentBuffer = buffer;
      const [newBuffer, newValue] = tf.tidy(() => {
        let update = weightDecay > 0 ? tf.add(gradient, tf.mul(variable, weightDecay)) : gradient;
        if (trustCoefficient > 0) {
          const weightNorm = tf.norm(variable);
          const gradientNorm = tf.norm(gradient);
          const denominator = tf.add(gradientNorm, tf.mul(weightNorm, weightDecay));
          const bothPositive = tf.logicalAnd(tf.greater(weightNorm, 0), tf.greater(gradientNorm, 0));
          const scale = tf.where(bothPositive, tf.div(tf.mul(weightNorm, trustCoefficient), tf.maximum(denominator, 1e-30)), tf.onesLike(weightNorm));
          update = tf.mul(update, scale);
        }
        const nextBuffer = tf.add(tf.mul(currentBuffer, momentum), update);
        return [nextBuffer, tf.sub(variable, tf.mul(nextBuffer, learningRate))];
      });
      currentBuffer.assign(newBuffer as tf.Tensor);
      variable.assign(newValue as tf.Tensor);
      tf.dispose([newBuffer as tf.Tensor, newValue as tf.Tensor]);
    }
  }

  dispose(): void {
    for (const buffer of this.buffers.values()) buffer.dispose();
    this.buffers.clear();
  }
}
