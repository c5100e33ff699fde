import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { resolveOptions } from '../../src/config/options.js';
import { decodeImage } from '../../src/decode/image.js';
import { DedupIndex, NearIndex } from '../../src/dedup/index.js';
import { hammingDistance, hashToHex, hexToHash, perceptualHash, type Hash64 } from '../../src/dedup/phash.js';
import { demoImages } from '../support/helpers.js';

const options = resolveOptions({ source: 'x', output: 'y' });

/** Deterministic 32-bit generator (mulberry32), so failures can be replayed. */
function random32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return (value ^ (value >>> 14)) >>> 0;
  };
}

function flipBits(hash: Hash64, bits: number[]): Hash64 {
  let { high, low } = hash;
  for (const bit of bits) {
    if (bit < 32) high = (high ^ (1 << (31 - bit))) >>> 0;
    else low = (low ^ (1 << (63 - bit))) >>> 0;
  }
  return { high, low };
}

describe('perceptualHash', () => {
  it('round-trips through hex', () => {
    const hash = { high: 0x84a14753, low: 0xf8fe207e };
    assert.equal(hashToHex(hash), '84a14753f8fe207e');
    assert.deepEqual(hexToHash('84a14753f8fe207e'), hash);
  });

  it('rejects input of the wrong size', () => {
    assert.throws(() => perceptualHash(new Uint8Array(10)), /expects 1024 grey pixels but received 10/);
  });

  it('stays close under resizing and lossy re-encoding, far between distinct photos', async () => {
    const names = (await readdir(demoImages)).filter((name) => name.endsWith('.jpg') && !name.startsWith('truncated'));
    const hashes = new Map<string, Hash64>();
    for (const name of names) {
      const bytes = await readFile(path.join(demoImages, name));
      const original = await decodeImage(bytes, options);
      const smaller = await sharp(bytes).resize({ width: 200 }).jpeg({ quality: 60 }).toBuffer();
      const copy = await decodeImage(smaller, options);
      assert.ok(hammingDistance(original.phash, copy.phash) <= options.nearRadius, `${name}: ${hammingDistance(original.phash, copy.phash)}`);
      hashes.set(name, original.phash);
    }
    const entries = [...hashes];
    for (let i = 0; i < entries.length; i += 1) {
      for (let j = i + 1; j < entries.length; j += 1) {
        const distance = hammingDistance(entries[i]![1], entries[j]![1]);
        assert.ok(distance > options.nearRadius, `${entries[i]![0]} vs ${entries[j]![0]}: ${distance}`);
      }
    }
  });
});

describe('NearIndex', () => {
  it('finds exactly what a linear scan finds', () => {
    const next = random32(42);
    for (const radius of [0, 3, 4, 8, 11]) {
      const index = new NearIndex(radius);
      const stored: Hash64[] = [];
      for (let i = 0; i < 2_000; i += 1) {
        // Half the hashes are perturbed copies of earlier ones, so matches exist at every distance.
        const base = i > 0 && i % 2 === 0 ? stored[next() % stored.length]! : { high: next(), low: next() };
        const hash = i % 2 === 0 && i > 0 ? flipBits(base, Array.from({ length: next() % (radius + 3) }, () => next() % 64)) : base;
        const expected = stored.map((item, id) => ({ id, distance: hammingDistance(hash, item) })).filter((item) => item.distance <= radius);
        const best = expected.sort((a, b) => a.distance - b.distance || a.id - b.id)[0];
        const found = index.find(hash);
        assert.equal(found?.key ?? null, best ? String(best.id) : null, `radius ${radius}, item ${i}`);
        index.add(String(i), hash);
        stored.push(hash);
      }
    }
  });

  it('rejects radii it cannot index', () => {
    assert.throws(() => new NearIndex(-1), /from 0 to 32/);
    assert.throws(() => new NearIndex(1.5), /from 0 to 32/);
  });
});

describe('DedupIndex', () => {
  const hash = { high: 1, low: 2 };

  it('reports exact before near, naming the kept key', () => {
    const index = new DedupIndex('exact_and_near', 4);
    index.add('000000001', 'aa', hash);
    assert.deepEqual(index.check('aa', hash), { kind: 'exact', keptKey: '000000001', distance: 0 });
    assert.deepEqual(index.check('bb', flipBits(hash, [5, 9])), { kind: 'near', keptKey: '000000001', distance: 2 });
    assert.equal(index.check('cc', flipBits(hash, [1, 2, 3, 4, 5])), null);
  });

  it('skips near matching in exact mode and everything in none', () => {
    const exact = new DedupIndex('exact', 4);
    exact.add('k', 'aa', hash);
    assert.equal(exact.check('bb', hash), null);
    const none = new DedupIndex('none', 4);
    none.add('k', 'aa', hash);
    assert.equal(none.check('aa', hash), null);
  });
});
