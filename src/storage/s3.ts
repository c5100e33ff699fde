import { PassThrough, Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { LocalStorage, byPath, isS3Url, type PendingObject, type Storage, type StoredObject } from './storage.js';

export interface S3Settings {
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** 'when_required' turns off the CRC32 checksums that SDK 3.729+ sends by default, which some S3-compatible servers reject. */
  checksums?: 'when_supported' | 'when_required';
}

/** Multipart part size: S3's minimum of 5 MiB, so an upload of a few hundred MB stays well under 10,000 parts. */
const PART_SIZE = 8 * 1024 * 1024;

/**
 * Reads S3 settings from the environment: GEOSHARD_S3_ENDPOINT (or AWS_ENDPOINT_URL_S3),
 * GEOSHARD_S3_FORCE_PATH_STYLE, GEOSHARD_S3_CHECKSUMS and AWS_REGION. Credentials come from
 * the SDK's standard chain (environment, shared files, instance roles) and are never logged.
 */
export function s3SettingsFromEnv(env: NodeJS.ProcessEnv = process.env): S3Settings {
  const endpoint = env.GEOSHARD_S3_ENDPOINT ?? env.AWS_ENDPOINT_URL_S3;
  const pathStyle = env.GEOSHARD_S3_FORCE_PATH_STYLE;
  const checksums = env.GEOSHARD_S3_CHECKSUMS;
  if (checksums !== undefined && checksums !== 'when_supported' && checksums !== 'when_required') {
    throw new Error(`Invalid GEOSHARD_S3_CHECKSUMS "${checksums}": expected when_supported or when_required`);
  }
  return {
    endpoint,
    region: env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1',
    // Local and most S3-compatible servers have no per-bucket host names.
    forcePathStyle: pathStyle === undefined ? endpoint !== undefined : pathStyle === 'true',
    checksums: checksums ?? (endpoint !== undefined ? 'when_required' : 'when_supported'),
  };
}

export function createS3Client(settings: S3Settings): S3Client {
  const checksumMode = settings.checksums === 'when_required' ? 'WHEN_REQUIRED' : 'WHEN_SUPPORTED';
  const config: S3ClientConfig = {
    region: settings.region,
    endpoint: settings.endpoint,
    forcePathStyle: settings.forcePathStyle,
    requestChecksumCalculation: checksumMode,
    responseChecksumValidation: checksumMode,
  };
  return new S3Client(config);
}

export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const match = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (!match || !match[1]) throw new Error(`Invalid S3 URL "${url}": expected s3://bucket or s3://bucket/prefix`);
  const prefix = match[2] ?? '';
  return { bucket: match[1], prefix: prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/` };
}

/**
 * An S3 prefix. Objects of unknown length stream through a multipart upload, which S3
 * makes visible only when the upload completes, so a reader never sees half a shard.
 */
export class S3Storage implements Storage {
  readonly root: string;
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;

  constructor(url: string, client: S3Client) {
    const { bucket, prefix } = parseS3Url(url);
    this.root = url;
    this.#client = client;
    this.#bucket = bucket;
    this.#prefix = prefix;
  }

  #key(relativePath: string): string {
    if (relativePath.split('/').includes('..')) throw new Error(`Invalid object path "${relativePath}": .. is not allowed`);
    return `${this.#prefix}${relativePath}`;
  }

  async createObject(relativePath: string): Promise<PendingObject> {
    const body = new PassThrough({ highWaterMark: PART_SIZE });
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#bucket, Key: this.#key(relativePath), Body: body },
      partSize: PART_SIZE,
      queueSize: 2,
      // A failed upload is aborted, so no orphaned parts are left to pay for.
      leavePartsOnError: false,
    });
    const done = upload.done();
    done.catch(() => undefined);
    return {
      stream: body,
      commit: async () => {
        if (!body.writableEnded) body.end();
        await done;
      },
      abort: async () => {
        await upload.abort().catch(() => undefined);
        body.destroy();
      },
    };
  }

  async writeObject(relativePath: string, data: Buffer | string): Promise<void> {
    await this.#client.send(new PutObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath), Body: data }));
  }

  async readObject(relativePath: string): Promise<Buffer> {
    const response = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath) }));
    return Buffer.from(await response.Body!.transformToByteArray());
  }

  async readRange(relativePath: string, start: number, end: number): Promise<Buffer> {
    if (end <= start) return Buffer.alloc(0);
    const response = await this.#client.send(
      new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath), Range: `bytes=${start}-${end - 1}` }),
    );
    return Buffer.from(await response.Body!.transformToByteArray());
  }

  async openReadStream(relativePath: string): Promise<Readable> {
    const response = await this.#client.send(new GetObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath) }));
    return response.Body as Readable;
  }

  async list(prefix = ''): Promise<StoredObject[]> {
    const objects: StoredObject[] = [];
    let continuationToken: string | undefined;
    do {
      const page = await this.#client.send(
        new ListObjectsV2Command({ Bucket: this.#bucket, Prefix: this.#key(prefix), ContinuationToken: continuationToken }),
      );
      for (const item of page.Contents ?? []) {
        if (item.Key) objects.push({ path: item.Key.slice(this.#prefix.length), size: item.Size ?? 0 });
      }
      continuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (continuationToken);
    return objects.sort(byPath);
  }

  async exists(relativePath: string): Promise<boolean> {
    try {
      await this.#client.send(new HeadObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath) }));
      return true;
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 404) return false;
      throw error;
    }
  }

  async remove(relativePath: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#key(relativePath) }));
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}

/** Opens a folder path or an s3:// URL as storage. */
export function openStorage(location: string, settings: S3Settings = s3SettingsFromEnv()): Storage {
  return isS3Url(location) ? new S3Storage(location, createS3Client(settings)) : new LocalStorage(location);
}
