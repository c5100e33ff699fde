import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';

import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';

import { registerWasmGradientKernels } from '../../src/train/wasm-kernels.js';

type Padding = 'same' | 'valid' | [[0, 0], [number, number], [number, number], [0, 0]];

interface ConvCase {
  name: string;
  /** [batch, height, width, channels] in NHWC order. */
  input: [number, number, number, number];
  /** [height, width, in channels, out channels]. */
  filter: [number, number, number, number];
  strides: [number, number];
  pad: Padding;
}

const CASES: ConvCase[] = [
  { name: '3x3 stride 1 same', input: [2, 7, 7, 3], filter: [3, 3, 3, 4], strides: [1, 1], pad: 'same' },
  { name: '3x3 stride 1 valid', input: [2, 7, 6, 3], filter: [3, 3, 3, 4], strides: [1, 1], pad: 'valid' },
  { name: '3x3 stride 2 same, even size', input: [2, 8, 8, 3], filter: [3, 3, 3, 5], strides: [2, 2], pad: 'same' },
  { name: '3x3 stride 2 same, odd size', input: [2, 9, 7, 2], filter: [3, 3, 2, 3], strides: [2, 2], pad: 'same' },
  { name: '3x3 stride 2 valid, unread rows', input: [1, 8, 9, 2], filter: [3, 3, 2, 3], strides: [2, 2], pad: 'valid' },
  { name: '1x1 stride 2 valid', input: [3, 8, 8, 4], filter: [1, 1, 4, 2], strides: [2, 2], pad: 'valid' },
  { name: '5x5 stride 2 same', input: [2, 10, 10, 3], filter: [5, 5, 3, 4], strides: [2, 2], pad: 'same' },
  { name: '2x3 filter, strides 1 and 2', input: [2, 6, 9, 3], filter: [2, 3, 3, 2], strides: [1, 2], pad: 'same' },
  { name: 'explicit padding stride 2', input: [2, 7, 7, 2], filter: [3, 3, 2, 3], strides: [2, 2], pad: [[0, 0], [1, 2], [0, 1], [0, 0]] },
];

/** Uniform values in [-1, 1) from a fixed linear congruential sequence, identical on every backend. */
function randomValues(size: number, seed: number): Float32Array {
  const values = new Float32Array(size);
  let state = seed >>> 0;
  for (let i = 0; i < size; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    values[i] = state / 2 ** 31 - 1;
  }
  return values;
}

interface Gradients {
  dx: Float32Array;
  dw: Float32Array;
}

/** Gradients of sum(conv2d(x, w) * r) for a random r, so that dy is random too. */
async function convGradients(backend: string, c: ConvCase): Promise<Gradients> {
  await tf.setBackend(backend);
  const x = tf.tensor4d(randomValues(c.input.reduce((a, b) => a * b), 1), c.input);
  const filter = tf.tensor4d(randomValues(c.filter.reduce((a, b) => a * b), 2), c.filter);
  const outShape = tf.tidy(() => tf.conv2d(x, filter, c.strides, c.pad).shape);
  const r = tf.tensor(randomValues(outShape.reduce((a, b) => a * b), 3), outShape);

  const gradient = tf.grads((xs: tf.Tensor, ws: tf.Tensor) =>
    tf.sum(tf.mul(tf.conv2d(xs as tf.Tensor4D, ws as tf.Tensor4D, c.strides, c.pad), r)),
  );
  const [dx, dw] = gradient([x, filter]) as [tf.Tensor, tf.Tensor];
  const result = { dx: (await dx.data()) as Float32Array, dw: (await dw.data()) as Float32Array };
  tf.dispose([x, filter, r, dx, dw]);
  return result;
}

function assertAllClose(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0;
  let worstIndex = -1;
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs((actual[i] as number) - (expected[i] as number)) / Math.max(1, Math.abs(expected[i] as number));
    if (error > worst) {
      worst = error;
      worstIndex = i;
    }
  }
  assert.ok(worst <= 1e-4, `${what}: element ${worstIndex} is ${actual[worstIndex]}, expected ${expected[worstIndex]}`);
}

before(async () => {
  tf.enableProdMode();
  registerWasmGradientKernels();
  await tf.setBackend('wasm');
  await tf.ready();
});

describe('wasm convolution gradients against cpu', () => {
  for (const c of CASES) {
    test(c.name, async () => {
      const expected = await convGradients('cpu', c);
      const actual = await convGradients('wasm', c);
      assertAllClose(actual.dw, expected.dw, 'filter gradient');
      assertAllClose(actual.dx, expected.dx, 'input gradient');
    });
  }

  test('kernels leak no tensors', async () => {
    await tf.setBackend('wasm');
    const c = CASES[2] as ConvCase;
    await convGradients('wasm', c);
    const tensorsBefore = tf.memory().numTensors;
    const buffersBefore = tf.engine().backend.numDataIds();
    await convGradients('wasm', c);
    assert.equal(tf.memory().numTensors, tensorsBefore, 'tensor count');
    assert.equal(tf.engine().backend.numDataIds(), buffersBefore, 'wasm buffer count');
  });
});
