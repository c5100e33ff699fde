import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { before, describe, test } from 'node:test';

import * as tf from '@tensorflow/tfjs';

import { sinkhornKnopp, sinkhornTensor, swavLoss, swavLossTensor } from '../../src/train/swav-math.js';

// Float64 reference values computed with numpy from random prototypes and embeddings.
const REFERENCE_PATH = new URL('../../../shared/reference/swav-vectors.json', import.meta.url);

interface ReferenceCase {
  name: string;
  epsilon: number;
  sinkhorn_iterations: number;
  temperature: number;
  crops_for_assign: number[];
  prototypes: number[][];
  embeddings: number[][][];
  scores: number[][][];
  expected_assignments_crop0: number[][];
  expected_loss: number;
}

function loadReference(): ReferenceCase[] | undefined {
  try {
    return (JSON.parse(readFileSync(REFERENCE_PATH, 'utf8')) as { cases: ReferenceCase[] }).cases;
  } catch {
    return undefined;
  }
}

function assertClose(actual: number, expected: number, relative: number, absolute: number, what: string): void {
  const tolerance = Math.max(relative * Math.abs(expected), absolute);
  assert.ok(Math.abs(actual - expected) <= tolerance, `${what}: ${actual} differs from ${expected} by more than ${tolerance}`);
}

function assertMatrixClose(actual: number[][], expected: number[][], relative: number, absolute: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: row count`);
  expected.forEach((row, i) => {
    assert.equal(actual[i]?.length, row.length, `${what}: length of row ${i}`);
    row.forEach((value, j) => assertClose(actual[i]![j]!, value, relative, absolute, `${what}[${i}][${j}]`));
  });
}

/** The algorithm exactly as written: exp of the max-shifted scores, then plain normalisations. */
function directSinkhorn(scores: number[][], epsilon: number, iterations: number): number[][] {
  const batch = scores.length;
  const prototypes = scores[0]!.length;
  const max = Math.max(...scores.flat());
  const q = Array.from({ length: prototypes }, (_, k) => scores.map((row) => Math.exp((row[k]! - max) / epsilon)));
  const total = q.flat().reduce((a, b) => a + b, 0);
  q.forEach((row) => row.forEach((_, b) => (row[b]! /= total)));
  for (let it = 0; it < iterations; it++) {
    for (const row of q) {
      const sum = row.reduce((a, b) => a + b, 0);
      row.forEach((_, b) => (row[b] = row[b]! / sum / prototypes));
    }
    for (let b = 0; b < batch; b++) {
      const sum = q.reduce((a, row) => a + row[b]!, 0);
      q.forEach((row) => (row[b] = row[b]! / sum / batch));
    }
  }
  return Array.from({ length: batch }, (_, b) => q.map((row) => row[b]! * batch));
}

/** Deterministic cosine-like scores in [-1, 1]. */
function makeScores(batch: number, prototypes: number, seed: number, spread = 1): number[][] {
  let state = seed;
  const next = (): number => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
  return Array.from({ length: batch }, () => Array.from({ length: prototypes }, () => (2 * next() - 1) * spread));
}

before(async () => {
  tf.enableProdMode();
  await tf.setBackend('cpu');
});

const reference = loadReference();

describe('swav math against float64 reference', { skip: reference ? false : `reference file not found at ${REFERENCE_PATH.pathname}` }, () => {
  for (const c of reference ?? []) {
    const options = {
      epsilon: c.epsilon,
      iterations: c.sinkhorn_iterations,
      temperature: c.temperature,
      cropsForAssign: c.crops_for_assign,
    };

    test(`sinkhornKnopp: ${c.name}`, () => {
      const q = sinkhornKnopp(c.scores[0]!, options);
      assertMatrixClose(q, c.expected_assignments_crop0, 1e-5, 1e-12, 'assignments');
    });

    test(`swavLoss: ${c.name}`, () => {
      assertClose(swavLoss(c.scores, options), c.expected_loss, 1e-5, 0, 'loss');
    });

    test(`sinkhornTensor: ${c.name}`, () => {
      const q = tf.tidy(() => sinkhornTensor(tf.tensor2d(c.scores[0]!), options).arraySync());
      // float32: relative 1e-4 on entries above 1e-6, which carry the whole assignment mass.
      assertMatrixClose(q, c.expected_assignments_crop0, 1e-4, 1e-6, 'assignments');
    });

    test(`swavLossTensor: ${c.name}`, () => {
      const loss = tf.tidy(() => swavLossTensor(c.scores.map((s) => tf.tensor2d(s)), options).arraySync());
      assertClose(loss, c.expected_loss, 1e-5, 0, 'loss');
    });
  }
});

describe('sinkhorn with small epsilon', () => {
  test('epsilon 0.001 stays finite in float32', () => {
    // A spread of 0.02 keeps exp((s - max) / 0.001) above the float64 underflow limit, so the
    // direct algorithm is finite too; exp(1 / 0.001) alone would overflow both float types.
    const scores = makeScores(12, 7, 42, 0.02).map((row) => row.map((v) => v + 0.97));
    const options = { epsilon: 0.001, iterations: 3 };

    const direct = directSinkhorn(scores, options.epsilon, options.iterations);
    const float64 = sinkhornKnopp(scores, options);
    const float32 = tf.tidy(() => sinkhornTensor(tf.tensor2d(scores), options).arraySync());

    assert.ok(direct.flat().every(Number.isFinite), 'direct float64 result is finite');
    assert.ok(float32.flat().every(Number.isFinite), 'float32 result is finite');
    assertMatrixClose(float64, direct, 1e-9, 1e-12, 'float64 log-domain');
    assertMatrixClose(float32, direct, 1e-3, 1e-5, 'float32 log-domain');
  });

  test('epsilon 0.001 on full-range scores keeps rows summing to 1', () => {
    // The direct algorithm underflows to 0 / 0 here; the log-domain forms do not.
    const scores = makeScores(16, 10, 7);
    const options = { epsilon: 0.001, iterations: 3 };

    const float64 = sinkhornKnopp(scores, options);
    const float32 = tf.tidy(() => sinkhornTensor(tf.tensor2d(scores), options).arraySync());

    assert.ok(float64.flat().every(Number.isFinite), 'float64 result is finite');
    assert.ok(float32.flat().every(Number.isFinite), 'float32 result is finite');
    float64.forEach((row, b) => assertClose(row.reduce((a, v) => a + v, 0), 1, 1e-9, 0, `float64 row ${b} sum`));
    assertMatrixClose(float32, float64, 1e-3, 1e-5, 'float32 against float64');
  });
});

describe('swav math option checks', () => {
  const scores = makeScores(4, 3, 1);
  const crops = [scores, makeScores(4, 3, 2)];
  const valid = { epsilon: 0.05, iterations: 3, temperature: 0.1, cropsForAssign: [0, 1] };

  test('epsilon must be positive', () => {
    assert.throws(() => sinkhornKnopp(scores, { epsilon: 0, iterations: 3 }), {
      message: 'Expected a finite number greater than 0 for epsilon but received 0 of type number',
    });
  });

  test('iterations must be an integer', () => {
    assert.throws(() => sinkhornKnopp(scores, { epsilon: 0.05, iterations: 1.5 }), {
      message: 'Expected an integer of at least 1 for iterations but received 1.5 of type number',
    });
  });

  test('scores must be rectangular', () => {
    assert.throws(() => sinkhornKnopp([[0.1, 0.2], [0.3]], { epsilon: 0.05, iterations: 3 }), {
      message: 'Expected a row of 2 numbers for scores[1] but received [0.3]',
    });
  });

  test('scores must be finite', () => {
    assert.throws(() => sinkhornKnopp([[0.1, Number.NaN]], { epsilon: 0.05, iterations: 3 }), {
      message: 'Expected a finite number for scores[0][1] but received NaN of type number',
    });
  });

  test('temperature must be positive', () => {
    assert.throws(() => swavLoss(crops, { ...valid, temperature: -1 }), {
      message: 'Expected a finite number greater than 0 for temperature but received -1 of type number',
    });
  });

  test('cropsForAssign must index crops', () => {
    assert.throws(() => swavLoss(crops, { ...valid, cropsForAssign: [0, 2] }), {
      message: 'Expected a non-empty list of distinct crop indices from 0 to 1 for cropsForAssign but received [0,2]',
    });
  });

  test('crops must share one shape', () => {
    assert.throws(() => swavLoss([scores, makeScores(5, 3, 2)], valid), {
      message: 'Expected a 4 x 3 matrix like crop 0 for cropScores[1] but received "5 x 3" of type string',
    });
  });

  test('one crop is rejected', () => {
    assert.throws(() => swavLoss([scores], valid), /Expected scores of at least 2 crops for cropScores/);
  });
});
