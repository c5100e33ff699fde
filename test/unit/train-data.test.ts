import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';

import tarStream from 'tar-stream';

import { readShard, splitMemberName } from '../../src/train/data.js';

let workDir: string;

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'geoshard-train-data-'));
});

after(async () => {
  await rm(workDir, { recursive: true, force: true });
});

describe('webdataset member names', () => {
  const cases: [string, string, string][] = [
    ['000001.jpg', '000001', 'jpg'],
    ['a.b.JPG', 'a', 'b.jpg'],
    ['folder.v2/000001.png', 'folder.v2/000001', 'png'],
    ['README', 'README', ''],
  ];
  for (const [name, key, extension] of cases) {
    test(`split ${name}`, () => {
      assert.deepEqual(splitMemberName(name), { key, extension });
    });
  }
});

describe('shard reading', () => {
  test('groups adjacent members by key', async () => {
    const file = path.join(workDir, 'shard.tar');
    const pack = tarStream.pack();
    const done = pipeline(pack, createWriteStream(file));
    pack.entry({ name: 'a.jpg' }, 'jpeg-bytes');
    pack.entry({ name: 'a.json' }, '{}');
    pack.entry({ name: 'b.txt' }, 'caption only');
    pack.entry({ name: 'c.webp' }, 'webp-bytes');
    pack.entry({ name: 'c.png' }, 'png-bytes');
    pack.finalize();
    await done;

    const samples = [];
    for await (const sample of readShard(file)) samples.push(sample);
    assert.deepEqual(samples.map((s) => s.key), ['a', 'b', 'c']);
    assert.equal(samples[0]?.image?.toString(), 'jpeg-bytes');
    assert.equal(samples[1]?.image, undefined, 'a sample without an image member has no image');
    assert.equal(samples[2]?.image?.toString(), 'png-bytes', 'png is preferred over webp');
  });
});
