import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadPipelineFile, resolveOptions } from '../../src/config/options.js';
import { orderedMap } from '../../src/pipeline/ordered.js';
import { temporaryFolder } from '../support/helpers.js';

describe('resolveOptions', () => {
  it('fills the img2dataset-like defaults', () => {
    const options = resolveOptions({ source: 's', output: 'o' });
    assert.equal(options.imageSize, 256);
    assert.equal(options.resizeMode, 'border');
    assert.equal(options.outputFormat, 'jpg');
    assert.equal(options.quality, 95);
    assert.equal(options.shardSize, 10_000);
    assert.equal(options.policy, 'eea-uk');
    assert.equal(options.unknownLocation, 'reject');
    assert.equal(options.allowPrivateNetwork, false);
    assert.deepEqual(options.disallowedDirectives, ['noai', 'noimageai']);
  });

  it('names each invalid field, the value and the fix', () => {
    assert.throws(
      () => resolveOptions({ source: 's', output: 'o', resize_mode: 'stretch', image_size: 0, shard_sise: 5 }),
      (error: Error) => {
        assert.match(error.message, /resize_mode: expected one of no, keep_ratio, keep_ratio_largest, center_crop, border but received "stretch"/);
        assert.match(error.message, /image_size: expected a value of at least 1 but received 0/);
        assert.match(error.message, /unknown field "shard_sise": remove it or use "shard_size"/);
        return true;
      },
    );
    assert.throws(() => resolveOptions({ output: 'o' }), /missing source: add it/);
    assert.throws(() => resolveOptions({ source: 's', image_size: -3 }, 'command-line options', 'flag'), /missing --output: add it[\s\S]*--image-size: expected a value of at least 1 but received -3/);
    assert.throws(() => resolveOptions({ source: 's', output: 'o', policy: 'gdpr' }), /policy: Invalid policy "gdpr"/);
  });
});

describe('loadPipelineFile', () => {
  it('resolves paths against the file and applies overrides', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'pipeline.yaml');
    await writeFile(file, 'source: urls.txt\noutput: out\nimage_size: 128\npolicy: eu\n');
    const options = await loadPipelineFile(file, { image_size: 64 });
    assert.equal(options.source, path.join(folder, 'urls.txt'));
    assert.equal(options.output, path.join(folder, 'out'));
    assert.equal(options.imageSize, 64);
    assert.equal(options.policy, 'eu');
  });

  it('reports YAML that is not a mapping', async (t) => {
    const folder = await temporaryFolder(t);
    const file = path.join(folder, 'pipeline.yaml');
    await writeFile(file, '- a\n- b\n');
    await assert.rejects(loadPipelineFile(file), /expected a mapping of option names to values/);
  });
});

describe('orderedMap', () => {
  it('yields in input order with bounded work in flight', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    async function* numbers() {
      for (let i = 0; i < 50; i += 1) yield i;
    }
    const results: number[] = [];
    for await (const value of orderedMap(numbers(), 5, async (item) => {
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      // Later items finish first, so order must come from the map, not from timing.
      await new Promise((resolve) => setTimeout(resolve, (50 - item) % 7));
      inFlight -= 1;
      return item * 2;
    })) {
      results.push(value);
    }
    assert.deepEqual(results, Array.from({ length: 50 }, (_, i) => i * 2));
    assert.equal(maxInFlight, 5);
  });
});
