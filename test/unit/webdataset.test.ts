import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import tar from 'tar-stream';
import { LocalStorage } from '../../src/storage/storage.js';
import { ShardWriter, writeWidsIndex } from '../../src/webdataset/writer.js';
import { temporaryFolder } from '../support/helpers.js';

async function members(file: string): Promise<{ name: string; size: number; mtime: number }[]> {
  const extract = tar.extract();
  const list: { name: string; size: number; mtime: number }[] = [];
  createReadStream(file).pipe(extract);
  for await (const entry of extract) {
    list.push({ name: entry.header.name, size: entry.header.size ?? 0, mtime: entry.header.mtime?.getTime() ?? -1 });
    entry.resume();
  }
  return list;
}

function sample(key: string) {
  return { key, files: { txt: Buffer.from(`caption ${key}`), jpg: Buffer.alloc(700, key.length), json: Buffer.from(`{"key":"${key}"}`) } };
}

describe('ShardWriter', () => {
  it('rotates shards, sorts members and publishes only whole shards', async (t) => {
    const folder = await temporaryFolder(t);
    const published: string[] = [];
    const writer = new ShardWriter({
      storage: new LocalStorage(folder),
      prefix: 'part',
      shardSize: 2,
      onShard: async (info) => {
        published.push(info.name);
        // The shard is renamed into place before it is announced.
        assert.ok((await readdir(folder)).includes(`${info.name}.tar`));
      },
    });
    for (const key of ['000000000', '000000001', '000000002']) await writer.write(sample(key));
    assert.deepEqual(published, ['part-000000']);
    assert.deepEqual((await readdir(folder)).filter((name) => name.endsWith('.tar')), ['part-000000.tar']);

    const shards = await writer.close();
    assert.deepEqual(shards.map((shard) => [shard.name, shard.samples, shard.firstKey, shard.lastKey]), [
      ['part-000000', 2, '000000000', '000000001'],
      ['part-000001', 1, '000000002', '000000002'],
    ]);
    assert.deepEqual((await members(path.join(folder, 'part-000000.tar'))).map((member) => member.name), [
      '000000000.jpg', '000000000.json', '000000000.txt', '000000001.jpg', '000000001.json', '000000001.txt',
    ]);
    assert.ok((await members(path.join(folder, 'part-000001.tar'))).every((member) => member.mtime === 0));

    const stats = JSON.parse(await readFile(path.join(folder, 'part-000001.stats.json'), 'utf8'));
    assert.equal(stats.samples, 1);
    assert.equal(stats.bytes, shards[1]!.bytes);
    assert.equal((await readdir(folder)).filter((name) => name.includes('partial')).length, 0);
  });

  it('writes identical bytes for identical samples', async (t) => {
    const folders = [await temporaryFolder(t), await temporaryFolder(t)];
    const digests: string[] = [];
    for (const folder of folders) {
      const writer = new ShardWriter({ storage: new LocalStorage(folder), prefix: 'same', shardSize: 10 });
      await writer.write(sample('k1'));
      await writer.write(sample('k2'));
      digests.push((await writer.close())[0]!.md5);
    }
    assert.equal(digests[0], digests[1]);
  });

  it('rejects keys with dots or slashes', async (t) => {
    const writer = new ShardWriter({ storage: new LocalStorage(await temporaryFolder(t)), prefix: 'p', shardSize: 10 });
    await assert.rejects(writer.write(sample('a.b')), /Invalid sample key "a\.b"/);
    await assert.rejects(writer.write(sample('a/b')), /no dots, no slashes/);
  });

  it('leaves nothing behind when aborted', async (t) => {
    const folder = await temporaryFolder(t);
    const writer = new ShardWriter({ storage: new LocalStorage(folder), prefix: 'p', shardSize: 10 });
    await writer.write(sample('k1'));
    await writer.abort();
    assert.deepEqual(await readdir(folder), []);
  });

  it('indexes shards for wids readers', async (t) => {
    const folder = await temporaryFolder(t);
    const writer = new ShardWriter({ storage: new LocalStorage(folder), prefix: 'p', shardSize: 1 });
    await writer.write(sample('k1'));
    await writer.write(sample('k2'));
    const file = await writeWidsIndex(new LocalStorage(folder), 'p', await writer.close());
    const index = JSON.parse(await readFile(path.join(folder, file), 'utf8'));
    assert.equal(index.__kind__, 'wids-shard-index-v1');
    assert.deepEqual(index.shardlist.map((item: { url: string; nsamples: number }) => [item.url, item.nsamples]), [['p-000000.tar', 1], ['p-000001.tar', 1]]);
  });
});
