// Checks that the services behind the integration tests work: PostgreSQL, Kafka and an S3-compatible server.
// Each test is skipped when its environment variable is unset. infra/local/env.sh prints the variables for
// the services that infra/local/*.sh start on this machine.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';

import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { Kafka, logLevel, Partitioners } from 'kafkajs';
import pg from 'pg';

const MIB = 1024 * 1024;

/** Reject with a message naming the step when `promise` does not settle within `ms` milliseconds. */
async function withTimeout<T>(promise: Promise<T>, ms: number, step: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${step} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

test('postgres runs queries and DDL', { timeout: 30_000 }, async (t) => {
  const url = process.env.GEOSHARD_TEST_DATABASE_URL;
  if (!url) {
    t.skip('GEOSHARD_TEST_DATABASE_URL not set: start infra/local/postgres.sh');
    return;
  }

  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: 10_000,
    statement_timeout: 10_000,
  });
  await client.connect();
  try {
    const version = await client.query<{ version: string }>('select version()');
    assert.match(version.rows[0]?.version ?? '', /^PostgreSQL \d+/);

    const table = `geoshard_check_${randomUUID().replaceAll('-', '')}`;
    await client.query(`create temp table ${table} (id integer primary key, name text not null)`);
    await client.query(`insert into ${table} (id, name) values ($1, $2), ($3, $4)`, [1, 'one', 2, 'two']);
    const rows = await client.query<{ id: number; name: string }>(`select id, name from ${table} order by id`);
    assert.deepEqual(rows.rows, [
      { id: 1, name: 'one' },
      { id: 2, name: 'two' },
    ]);
    await client.query(`drop table ${table}`);

    const remaining = await client.query('select 1 from pg_tables where tablename = $1', [table]);
    assert.equal(remaining.rowCount, 0);
  } finally {
    await client.end();
  }
});

test('kafka round-trips three messages', { timeout: 60_000 }, async (t) => {
  const brokers = process.env.GEOSHARD_TEST_KAFKA_BROKERS;
  if (!brokers) {
    t.skip('GEOSHARD_TEST_KAFKA_BROKERS not set: start infra/local/kafka.sh');
    return;
  }

  const suffix = randomUUID();
  const topic = `geoshard-check-${suffix}`;
  const kafka = new Kafka({
    clientId: 'geoshard-services-test',
    brokers: brokers.split(','),
    connectionTimeout: 5_000,
    requestTimeout: 10_000,
    retry: { retries: 3 },
    logLevel: logLevel.ERROR,
  });
  const admin = kafka.admin();
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
  const consumer = kafka.consumer({ groupId: `geoshard-check-group-${suffix}` });

  try {
    await admin.connect();
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: 1, replicationFactor: 1 }],
      waitForLeaders: true,
    });
    assert.equal(created, true, `topic ${topic} already existed`);

    const sent = ['first', 'second', 'third'];
    await producer.connect();
    await producer.send({
      topic,
      messages: sent.map((value, index) => ({ key: `key-${index}`, value })),
    });

    const received: { key: string; value: string; offset: string }[] = [];
    let resolveAllReceived!: () => void;
    const allReceived = new Promise<void>((resolve) => {
      resolveAllReceived = resolve;
    });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        received.push({
          key: message.key?.toString() ?? '',
          value: message.value?.toString() ?? '',
          offset: message.offset,
        });
        if (received.length >= sent.length) resolveAllReceived();
      },
    });
    await withTimeout(allReceived, 45_000, `consuming ${sent.length} messages from ${topic}`);

    assert.deepEqual(
      received.map((message) => message.value),
      sent,
    );
    assert.deepEqual(
      received.map((message) => message.key),
      ['key-0', 'key-1', 'key-2'],
    );
    assert.deepEqual(
      received.map((message) => message.offset),
      ['0', '1', '2'],
    );
  } finally {
    await consumer.disconnect();
    await producer.disconnect();
    await admin.deleteTopics({ topics: [topic] }).catch(() => undefined);
    await admin.disconnect();
  }
});

test('s3 multipart upload and ranged get', { timeout: 60_000 }, async (t) => {
  const endpoint = process.env.GEOSHARD_TEST_S3_ENDPOINT;
  if (!endpoint) {
    t.skip('GEOSHARD_TEST_S3_ENDPOINT not set: start infra/local/s3.sh');
    return;
  }

  // Explicit credentials keep the SDK's default provider chain, which can query the EC2 instance
  // metadata address, out of this test.
  const client = new S3Client({
    endpoint,
    region: process.env.AWS_REGION ?? 'us-east-1',
    credentials: {
      accessKeyId: process.env.AWS_ACCESS_KEY_ID ?? 'test',
      secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY ?? 'test',
    },
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 2,
  });
  const bucket = `geoshard-check-${randomUUID()}`;
  const key = 'shards/check-000000.tar';
  const partSize = 5 * MIB;
  // 12 MiB splits into parts of 5, 5 and 2 MiB. Random bytes make a wrong range visible.
  const body = randomBytes(12 * MIB);

  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  try {
    const upload = new Upload({
      client,
      params: { Bucket: bucket, Key: key, Body: body },
      partSize,
      queueSize: 2,
      leavePartsOnError: false,
    });
    const uploaded = await upload.done();
    // S3 gives a multipart object the ETag "<md5 of the part md5s>-<part count>".
    assert.match(uploaded.ETag ?? '', /-3"?$/, `expected a 3-part multipart ETag, got ${uploaded.ETag}`);

    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    assert.equal(head.ContentLength, body.length);

    const listing = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
    assert.deepEqual(
      listing.Contents?.map((object) => [object.Key, object.Size]),
      [[key, body.length]],
    );

    const ranged = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: 'bytes=5-14' }));
    assert.equal(ranged.ContentRange, `bytes 5-14/${body.length}`);
    assert.equal(ranged.ContentLength, 10);
    assert.ok(ranged.Body, 'GetObject returned no body');
    const bytes = Buffer.from(await ranged.Body.transformToByteArray());
    assert.deepEqual(bytes, body.subarray(5, 15));
  } finally {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => undefined);
    await client.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
    client.destroy();
  }
});
