import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';

import * as tf from '@tensorflow/tfjs';

import { SwavModel, type ModelConfig } from '../../src/train/model.js';
import { DEFAULT_OPTIMIZER_CONFIG, LarsSgd, learningRateAt } from '../../src/train/optimizer.js';
import { DEFAULT_SWAV_CONFIG, NonFiniteLossError, SwavTrainer } from '../../src/train/trainer.js';

const TINY: ModelConfig = { inputChannels: 3, width: 4, stageDepths: [1, 1], hiddenDim: 8, embeddingDim: 4, prototypes: 6 };

before(async () => {
  tf.enableProdMode();
  await tf.setBackend('cpu');
});

describe('swav model', () => {
  test('shapes and normalised outputs', () => {
    const model = new SwavModel(TINY, 1);
    tf.tidy(() => {
      const features = model.features(tf.randomNormal([3, 8, 8, 3]) as tf.Tensor4D);
      assert.deepEqual(features.shape, [3, 8]);
      const embeddings = model.project(features);
      assert.deepEqual(embeddings.shape, [3, 4]);
      const norms = tf.norm(embeddings, 'euclidean', 1).arraySync() as number[];
      norms.forEach((n, i) => assert.ok(Math.abs(n - 1) < 1e-5, `embedding ${i} has norm ${n}`));
      const prototypeNorms = tf.norm(model.variable('prototypes.weight'), 'euclidean', 1).arraySync() as number[];
      prototypeNorms.forEach((n, i) => assert.ok(Math.abs(n - 1) < 1e-5, `prototype ${i} has norm ${n}`));
    });
    model.dispose();
  });

  test('training batch norm gradient matches tf.batchNorm', () => {
    // The model's batch norm has a hand-written gradient; compare it with TensorFlow.js's own.
    const model = new SwavModel(TINY, 2);
    const x = tf.randomNormal([4, 6, 6, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
    const weight = tf.randomNormal([4, 8], 0, 1, 'float32', 4);
    const names = model.trainableNames().filter((name) => !name.startsWith('head.') && name !== 'prototypes.weight');
    const variables = names.map((name) => model.variable(name));

    const custom = tf.variableGrads(() => tf.sum(tf.mul(model.features(x, new Map()), weight)) as tf.Scalar, variables).grads;

    // Reference: the same forward pass with tf.moments + tf.batchNorm.
    const convBn = (input: tf.Tensor4D, prefix: string, stride: number): tf.Tensor4D => {
      const y = tf.conv2d(input, model.variable(`${prefix}.weight`) as tf.Tensor4D, stride, 'same');
      const { mean, variance } = tf.moments(y, [0, 1, 2]);
      return tf.batchNorm(y, mean, variance, model.variable(`${prefix}.bn.beta`), model.variable(`${prefix}.bn.gamma`), 1e-5) as tf.Tensor4D;
    };
    const reference = tf.variableGrads(() => {
      let h = tf.relu(convBn(x, 'stem', 1));
      const a = tf.relu(convBn(h, 'stage1.block1.conv1', 1));
      h = tf.relu(tf.add(convBn(a, 'stage1.block1.conv2', 1), h)) as tf.Tensor4D;
      const b = tf.relu(convBn(h, 'stage2.block1.conv1', 2));
      h = tf.relu(tf.add(convBn(b, 'stage2.block1.conv2', 1), convBn(h, 'stage2.block1.shortcut', 2))) as tf.Tensor4D;
      return tf.sum(tf.mul(tf.mean(h, [1, 2]), weight)) as tf.Scalar;
    }, variables).grads;

    names.forEach((name, i) => {
      const key = (variables[i] as tf.Variable).name;
      const expected = reference[key]!.dataSync();
      const actual = custom[key]!.dataSync();
      expected.forEach((v, j) => assert.ok(Math.abs(actual[j]! - v) <= 1e-4 * Math.max(1, Math.abs(v)), `${name}[${j}]: ${actual[j]} != ${v}`));
    });
    model.dispose();
  });
});

describe('learning rate schedule', () => {
  const config = { ...DEFAULT_OPTIMIZER_CONFIG, baseLr: 1, finalLr: 0.1, warmupStartLr: 0 };

  test('linear warm-up then cosine', () => {
    assert.equal(learningRateAt(0, 100, 10, config), 0);
    assert.equal(learningRateAt(5, 100, 10, config), 0.5);
    assert.equal(learningRateAt(10, 100, 10, config), 1);
    assert.ok(Math.abs(learningRateAt(55, 100, 10, config) - 0.55) < 1e-12);
    assert.ok(Math.abs(learningRateAt(100, 100, 10, config) - 0.1) < 1e-12);
  });
});

function maxDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs((a[i] as number) - (b[i] as number)));
  return max;
}

describe('swav trainer', () => {
  test('non-finite loss stops before the update', () => {
    const model = new SwavModel(TINY, 3);
    const trainer = new SwavTrainer(model, new LarsSgd(DEFAULT_OPTIMIZER_CONFIG), DEFAULT_SWAV_CONFIG);
    const before = model.variable('stem.weight').dataSync().slice();
    const crops = [tf.fill([4, 8, 8, 3], Number.NaN) as tf.Tensor4D, tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D];
    assert.throws(() => trainer.step(crops, { step: 3, epoch: 0, learningRate: 0.1 }), (error: unknown) => {
      assert.ok(error instanceof NonFiniteLossError);
      assert.match(error.message, /the loss at step 3 is NaN/);
      return true;
    });
    assert.deepEqual(model.variable('stem.weight').dataSync(), before, 'weights unchanged');
    tf.dispose(crops);
    trainer.dispose();
  });

  test('frozen prototypes do not move', () => {
    const model = new SwavModel(TINY, 4);
    const trainer = new SwavTrainer(model, new LarsSgd(DEFAULT_OPTIMIZER_CONFIG), { ...DEFAULT_SWAV_CONFIG, freezePrototypesSteps: 1 });
    const crops = [tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D, tf.randomNormal([4, 8, 8, 3]) as tf.Tensor4D];
    const prototypes = model.variable('prototypes.weight').dataSync().slice();
    const stem = model.variable('stem.weight').dataSync().slice();
    trainer.step(crops, { step: 0, epoch: 0, learningRate: 0.5 });
    // Re-normalising the rows before each step may change the last bits only.
    assert.ok(maxDifference(model.variable('prototypes.weight').dataSync(), prototypes) < 1e-6, 'prototypes frozen at step 0');
    assert.ok(maxDifference(model.variable('stem.weight').dataSync(), stem) > 1e-5, 'backbone updated');
    trainer.step(crops, { step: 1, epoch: 0, learningRate: 0.5 });
    assert.ok(maxDifference(model.variable('prototypes.weight').dataSync(), prototypes) > 1e-5, 'prototypes updated at step 1');
    tf.dispose(crops);
    trainer.dispose();
  });
});
