// Structural checks of the deployment files in infra/deploy: the Dockerfile, the compose
// stack and the Kubernetes manifests. Each check returns a list of problems, so the tests
// can also feed it broken copies and prove that it reports them.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import YAML from 'yaml';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const deployDir = path.join(repoRoot, 'infra/deploy');
const k8sDir = path.join(deployDir, 'k8s');

const NAMESPACE = 'geoshard';
const PIPELINE_PATH = '/etc/geoshard/pipeline.yaml';
const UNITS_TOPIC = 'geoshard.units';
const EVENTS_TOPIC = 'geoshard.events';

/**
 * Environment variables that the submit, worker and status commands read. PGPASSWORD is read
 * by node-postgres, and supplies the password that the pipelines leave out of `catalog`.
 */
const GEOSHARD_ENV = [
  'GEOSHARD_KAFKA_BROKERS',
  'GEOSHARD_CATALOG_URL',
  'GEOSHARD_S3_ENDPOINT',
  'GEOSHARD_S3_FORCE_PATH_STYLE',
  'AWS_REGION',
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'GEOSHARD_LOG_LEVEL',
  'PGPASSWORD',
];

/** Variables that carry credentials, so Kubernetes must take them from a Secret. */
const SECRET_ENV = ['GEOSHARD_CATALOG_URL', 'PGPASSWORD', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'];

/** The only kinds the manifests may use, with the apiVersion each must have. */
const ALLOWED_KINDS: Record<string, string> = {
  Namespace: 'v1',
  ConfigMap: 'v1',
  Secret: 'v1',
  Deployment: 'apps/v1',
  Job: 'batch/v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  PodDisruptionBudget: 'policy/v1',
};

// ---------------------------------------------------------------------------------------
// Shapes of the parts of the manifests that the checks read. Parsed YAML is cast to them.

interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: unknown[];
}

interface KeyRef {
  name?: string;
  key?: string;
  optional?: boolean;
}

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { configMapKeyRef?: KeyRef; secretKeyRef?: KeyRef; fieldRef?: unknown; resourceFieldRef?: unknown };
}

interface EnvFromSource {
  configMapRef?: { name?: string; optional?: boolean };
  secretRef?: { name?: string; optional?: boolean };
}

interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  envFrom?: EnvFromSource[];
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  volumeMounts?: { name: string; mountPath: string }[];
}

interface Volume {
  name: string;
  configMap?: { name?: string; items?: { key: string; path: string }[]; optional?: boolean };
  secret?: { secretName?: string; items?: { key: string; path: string }[]; optional?: boolean };
  emptyDir?: unknown;
}

interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  terminationGracePeriodSeconds?: number;
  restartPolicy?: string;
}

interface K8sObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string> };
  data?: Record<string, string>;
  binaryData?: Record<string, string>;
  stringData?: Record<string, string>;
  spec?: {
    replicas?: number;
    selector?: LabelSelector;
    template?: { metadata?: { labels?: Record<string, string> }; spec?: PodSpec };
    scaleTargetRef?: { apiVersion?: string; kind?: string; name?: string };
    minReplicas?: number;
    maxReplicas?: number;
    metrics?: { type: string; resource?: { name: string } }[];
    minAvailable?: number | string;
    maxUnavailable?: number | string;
  };
}

/** A manifest together with the file it came from, for messages. */
interface Manifest {
  file: string;
  object: K8sObject;
}

interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string | string[];
  entrypoint?: string | string[];
  environment?: Record<string, string | number | boolean | null> | string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  ports?: (string | number | { host_ip?: string; published?: string | number; target?: number })[];
  volumes?: (string | { type?: string; source?: string; target?: string })[];
  healthcheck?: { test?: string | string[]; disable?: boolean };
  deploy?: { replicas?: number };
  restart?: string;
  stop_grace_period?: string;
  network_mode?: string;
  profiles?: string[];
}

interface ComposeFile {
  services?: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------
// Loading

function listFiles(folder: string): string[] {
  const files: string[] = [];
  for (const entry of readdirSync(folder, { withFileTypes: true })) {
    const full = path.join(folder, entry.name);
    if (entry.isDirectory()) files.push(...listFiles(full));
    else files.push(full);
  }
  return files.sort();
}

function relative(file: string): string {
  return path.relative(repoRoot, file);
}

function isYamlFile(file: string): boolean {
  return file.endsWith('.yaml') || file.endsWith('.yml');
}

/** Parses every document of a YAML file, throwing on the first syntax error or warning. */
function parseYamlDocuments(file: string): unknown[] {
  const documents = YAML.parseAllDocuments(readFileSync(file, 'utf8'));
  const values: unknown[] = [];
  for (const document of documents) {
    const problems = [...document.errors, ...document.warnings];
    if (problems.length > 0) {
      throw new Error(`${relative(file)}: ${problems.map((problem) => problem.message).join('; ')}`);
    }
    values.push(document.toJS());
  }
  return values;
}

function loadManifests(): Manifest[] {
  const manifests: Manifest[] = [];
  for (const file of listFiles(k8sDir)) {
    if (!isYamlFile(file) || path.basename(file) === 'kustomization.yaml') continue;
    for (const object of parseYamlDocuments(file)) {
      // An empty document, for example after a trailing "---", is not an object.
      if (object !== null && object !== undefined) manifests.push({ file: relative(file), object: object as K8sObject });
    }
  }
  return manifests;
}

function loadCompose(): ComposeFile {
  return YAML.parse(readFileSync(path.join(deployDir, 'compose.yaml'), 'utf8')) as ComposeFile;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

// ---------------------------------------------------------------------------------------
// Helpers over manifests

function describeObject(manifest: Manifest): string {
  return `${manifest.file}: ${manifest.object.kind ?? '(no kind)'} ${manifest.object.metadata?.name ?? '(no name)'}`;
}

function findObject(manifests: Manifest[], kind: string, name: string): K8sObject {
  const found = manifests.find((manifest) => manifest.object.kind === kind && manifest.object.metadata?.name === name);
  assert.ok(found, `${kind} ${name} not found in ${relative(k8sDir)}`);
  return found.object;
}

function podSpecOf(object: K8sObject): PodSpec | undefined {
  if (object.kind !== 'Deployment' && object.kind !== 'Job') return undefined;
  return object.spec?.template?.spec;
}

function allContainers(spec: PodSpec): Container[] {
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

function selectorMatches(selector: LabelSelector | undefined, labels: Record<string, string> | undefined): boolean {
  const matchLabels = selector?.matchLabels ?? {};
  if (Object.keys(matchLabels).length === 0) return false;
  return Object.entries(matchLabels).every(([key, value]) => labels?.[key] === value);
}

/** Converts a Kubernetes CPU quantity ("1", "500m", 2) to cores. */
function cpuCores(quantity: string | number | undefined): number | undefined {
  if (quantity === undefined) return undefined;
  if (typeof quantity === 'number') return quantity;
  const millicores = /^(\d+)m$/.exec(quantity);
  if (millicores) return Number(millicores[1]) / 1000;
  const cores = Number(quantity);
  return Number.isFinite(cores) ? cores : undefined;
}

// ---------------------------------------------------------------------------------------
// Kubernetes checks

function checkManifestStructure(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  let namespaces = 0;

  for (const manifest of manifests) {
    const { object } = manifest;
    const where = describeObject(manifest);

    if (typeof object.apiVersion !== 'string' || object.apiVersion === '') problems.push(`${where}: missing apiVersion`);
    if (typeof object.kind !== 'string' || object.kind === '') problems.push(`${where}: missing kind`);
    const name = object.metadata?.name;
    if (typeof name !== 'string' || name === '') {
      problems.push(`${where}: missing metadata.name`);
    } else if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) {
      problems.push(`${where}: metadata.name "${name}" is not a valid DNS subdomain name`);
    }
    if (object.kind === undefined) continue;

    const expectedVersion = ALLOWED_KINDS[object.kind];
    if (expectedVersion === undefined) {
      problems.push(`${where}: kind ${object.kind} is not one of ${Object.keys(ALLOWED_KINDS).join(', ')}`);
    } else if (object.apiVersion !== expectedVersion) {
      problems.push(`${where}: apiVersion is ${String(object.apiVersion)}, expected ${expectedVersion}`);
    }

    if (object.kind === 'Namespace') {
      namespaces += 1;
      if (name !== NAMESPACE) problems.push(`${where}: the Namespace must be named ${NAMESPACE}`);
      if (object.metadata?.namespace !== undefined) problems.push(`${where}: a Namespace has no metadata.namespace`);
    } else if (object.metadata?.namespace !== NAMESPACE) {
      problems.push(`${where}: metadata.namespace is ${String(object.metadata?.namespace)}, expected ${NAMESPACE}`);
    }

    const identity = `${object.kind}/${String(name)}`;
    if (seen.has(identity)) problems.push(`${where}: ${identity} is defined twice`);
    seen.add(identity);
  }

  if (namespaces !== 1) problems.push(`expected exactly one Namespace, found ${namespaces}`);
  return problems;
}

function checkSelectors(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  const deployments = manifests.filter((manifest) => manifest.object.kind === 'Deployment');

  for (const manifest of deployments) {
    const spec = manifest.object.spec;
    if (!selectorMatches(spec?.selector, spec?.template?.metadata?.labels)) {
      problems.push(`${describeObject(manifest)}: spec.selector.matchLabels is empty or does not match spec.template.metadata.labels`);
    }
  }

  for (const manifest of manifests) {
    const { object } = manifest;
    if (object.kind === 'PodDisruptionBudget') {
      const covered = deployments.some((deployment) =>
        selectorMatches(object.spec?.selector, deployment.object.spec?.template?.metadata?.labels),
      );
      if (!covered) problems.push(`${describeObject(manifest)}: the selector matches the pods of no Deployment`);
    }
    if (object.kind === 'HorizontalPodAutoscaler') {
      const target = object.spec?.scaleTargetRef;
      const exists = deployments.some((deployment) => deployment.object.metadata?.name === target?.name);
      if (target?.kind !== 'Deployment' || target.apiVersion !== 'apps/v1' || !exists) {
        problems.push(`${describeObject(manifest)}: scaleTargetRef ${JSON.stringify(target)} is not an apps/v1 Deployment in this folder`);
      }
    }
  }
  return problems;
}

/** Checks that every ConfigMap, Secret, key and volume a pod refers to is defined. */
function checkReferences(manifests: Manifest[]): string[] {
  const problems: string[] = [];
  const configMapKeys = new Map<string, Set<string>>();
  const secretKeys = new Map<string, Set<string>>();

  for (const { object } of manifests) {
    const name = object.metadata?.name ?? '';
    if (object.kind === 'ConfigMap') {
      configMapKeys.set(name, new Set([...Object.keys(object.data ?? {}), ...Object.keys(object.binaryData ?? {})]));
    }
    if (object.kind === 'Secret') {
      secretKeys.set(name, new Set([...Object.keys(object.data ?? {}), ...Object.keys(object.stringData ?? {})]));
    }
  }

  function checkKey(where: string, kind: string, defined: Map<string, Set<string>>, ref: KeyRef): void {
    const keys = defined.get(ref.name ?? '');
    if (keys === undefined) {
      problems.push(`${where}: ${kind} "${String(ref.name)}" is not defined`);
    } else if (ref.key === undefined || (!keys.has(ref.key) && ref.optional !== true)) {
      problems.push(`${where}: ${kind} "${String(ref.name)}" has no key "${String(ref.key)}"`);
    }
  }

  for (const manifest of manifests) {
    const spec = podSpecOf(manifest.object);
    if (spec === undefined) continue;
    const where = describeObject(manifest);
    const volumeNames = new Set((spec.volumes ?? []).map((volume) => volume.name));

    for (const volume of spec.volumes ?? []) {
      if (volume.configMap) {
        for (const item of volume.configMap.items ?? []) {
          checkKey(`${where}, volume ${volume.name}`, 'ConfigMap', configMapKeys, { name: volume.configMap.name, key: item.key });
        }
        if (!configMapKeys.has(volume.configMap.name ?? '')) {
          problems.push(`${where}, volume ${volume.name}: ConfigMap "${String(volume.configMap.name)}" is not defined`);
        }
      }
      if (volume.secret) {
        for (const item of volume.secret.items ?? []) {
          checkKey(`${where}, volume ${volume.name}`, 'Secret', secretKeys, { name: volume.secret.secretName, key: item.key });
        }
        if (!secretKeys.has(volume.secret.secretName ?? '')) {
          problems.push(`${where}, volume ${volume.name}: Secret "${String(volume.secret.secretName)}" is not defined`);
        }
      }
    }

    for (const container of allContainers(spec)) {
      const at = `${where}, container ${container.name}`;
      for (const variable of container.env ?? []) {
        const configMapRef = variable.valueFrom?.configMapKeyRef;
        const secretRef = variable.valueFrom?.secretKeyRef;
        if (configMapRef) checkKey(`${at}, env ${variable.name}`, 'ConfigMap', configMapKeys, configMapRef);
        if (secretRef) checkKey(`${at}, env ${variable.name}`, 'Secret', secretKeys, secretRef);
      }
      for (const source of container.envFrom ?? []) {
        if (source.configMapRef && !configMapKeys.has(source.configMapRef.name ?? '')) {
          problems.push(`${at}, envFrom: ConfigMap "${String(source.configMapRef.name)}" is not defined`);
        }
        if (source.secretRef && !secretKeys.has(source.secretRef.name ?? '')) {
          problems.push(`${at}, envFrom: Secret "${String(source.secretRef.name)}" is not defined`);
        }
      }
      for (const mount of container.volumeMounts ?? []) {
        if (!volumeNames.has(mount.name)) problems.push(`${at}: volumeMount "${mount.name}" names no volume of the pod`);
      }
    }
  }
  return problems;
}

/** Checks that a geoshard container gets every variable, credentials only from a Secret. */
function checkGeoshardEnv(where: string, container: Container): string[] {
  const problems: string[] = [];
  const byName = new Map((container.env ?? []).map((variable) => [variable.name, variable]));
  for (const name of GEOSHARD_ENV) {
    const variable = byName.get(name);
    if (variable === undefined) {
      problems.push(`${where}: environment variable ${name} is missing`);
      continue;
    }
    if (SECRET_ENV.includes(name) && (variable.value !== undefined || variable.valueFrom?.secretKeyRef === undefined)) {
      problems.push(`${where}: ${name} must come from a secretKeyRef, not from a literal value or a ConfigMap`);
    }
    if (variable.value === undefined && variable.valueFrom === undefined) {
      problems.push(`${where}: ${name} has neither value nor valueFrom`);
    }
  }
  return problems;
}

function checkPipelineMount(where: string, spec: PodSpec, container: Container): string[] {
  const problems: string[] = [];
  const folder = path.posix.dirname(PIPELINE_PATH);
  const mount = (container.volumeMounts ?? []).find((candidate) => candidate.mountPath === folder);
  const volume = spec.volumes?.find((candidate) => candidate.name === mount?.name);
  const item = volume?.configMap?.items?.find((candidate) => candidate.path === path.posix.basename(PIPELINE_PATH));
  if (mount === undefined || volume?.configMap === undefined || item === undefined) {
    problems.push(`${where}: no ConfigMap volume provides ${PIPELINE_PATH}`);
  }
  return problems;
}

/** Checks the worker Deployment's command, size, grace period and settings. */
function checkWorkerDeployment(worker: K8sObject): string[] {
  const problems: string[] = [];
  const spec = worker.spec?.template?.spec;
  const container = spec?.containers?.find((candidate) => candidate.name === 'worker');
  if (spec === undefined || container === undefined) return ['Deployment geoshard-worker has no container named worker'];

  if (worker.spec?.replicas !== 3) problems.push(`worker replicas is ${String(worker.spec?.replicas)}, expected 3`);
  if (spec.terminationGracePeriodSeconds !== 120) {
    problems.push(`worker terminationGracePeriodSeconds is ${String(spec.terminationGracePeriodSeconds)}, expected 120`);
  }
  if (container.image !== 'geoshard:latest') problems.push(`worker image is ${String(container.image)}, expected geoshard:latest`);
  if (JSON.stringify(container.args) !== JSON.stringify(['worker', PIPELINE_PATH])) {
    problems.push(`worker args are ${JSON.stringify(container.args)}, expected ["worker", "${PIPELINE_PATH}"]`);
  }
  for (const section of ['requests', 'limits'] as const) {
    const cores = cpuCores(container.resources?.[section]?.cpu);
    if (cores !== 1) problems.push(`worker resources.${section}.cpu is ${String(container.resources?.[section]?.cpu)}, expected one CPU`);
    if (container.resources?.[section]?.memory === undefined) problems.push(`worker resources.${section}.memory is missing`);
  }
  problems.push(...checkGeoshardEnv('worker', container));
  problems.push(...checkPipelineMount('worker', spec, container));
  return problems;
}

/** Reads `--topic NAME ... --partitions N ... --replication-factor R` commands from a script. */
function topicsInScript(script: string): Map<string, { partitions: number; replication: number }> {
  const topics = new Map<string, { partitions: number; replication: number }>();
  const commands = script.replace(/\\\n/g, ' ').split('\n');
  for (const command of commands) {
    if (!command.includes('kafka-topics.sh') || !command.includes('--create')) continue;
    const topic = /--topic\s+(\S+)/.exec(command)?.[1];
    const partitions = /--partitions\s+(\d+)/.exec(command)?.[1];
    const replication = /--replication-factor\s+(\d+)/.exec(command)?.[1];
    if (topic && partitions && replication) {
      topics.set(topic, { partitions: Number(partitions), replication: Number(replication) });
    }
  }
  return topics;
}

function checkTopics(where: string, script: string, replication: number): string[] {
  const problems: string[] = [];
  if (!script.includes('/opt/kafka/bin/kafka-topics.sh')) problems.push(`${where}: does not run /opt/kafka/bin/kafka-topics.sh`);
  const topics = topicsInScript(script);
  for (const topic of [UNITS_TOPIC, EVENTS_TOPIC]) {
    const settings = topics.get(topic);
    if (settings === undefined) {
      problems.push(`${where}: does not create topic ${topic} with --partitions and --replication-factor`);
    } else if (settings.replication !== replication) {
      problems.push(`${where}: topic ${topic} has replication factor ${settings.replication}, expected ${replication}`);
    }
  }
  return problems;
}

function checkKustomization(kustomization: Record<string, unknown>, filesInFolder: string[]): string[] {
  const problems: string[] = [];
  if (kustomization.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || kustomization.kind !== 'Kustomization') {
    problems.push('kustomization.yaml: expected apiVersion kustomize.config.k8s.io/v1beta1 and kind Kustomization');
  }
  if (kustomization.namespace !== NAMESPACE) problems.push(`kustomization.yaml: namespace is ${String(kustomization.namespace)}, expected ${NAMESPACE}`);

  const resources = Array.isArray(kustomization.resources) ? (kustomization.resources as string[]) : [];
  const listed = new Set(resources);
  if (listed.size !== resources.length) problems.push('kustomization.yaml: a resource is listed twice');
  for (const file of filesInFolder) {
    if (!listed.has(file)) problems.push(`kustomization.yaml: ${file} is in the folder but not in resources`);
  }
  for (const file of listed) {
    if (!filesInFolder.includes(file)) problems.push(`kustomization.yaml: resource ${file} does not exist`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------
// Pipeline file checks

const pipelineSchema = JSON.parse(readFileSync(path.join(repoRoot, 'schemas/pipeline.schema.json'), 'utf8')) as object;
const validatePipelineSchema = new Ajv({ allErrors: true, strict: false }).compile(pipelineSchema);

function checkPipelineText(where: string, text: string): string[] {
  const problems: string[] = [];
  if (text.includes('${')) problems.push(`${where}: contains a \${...} placeholder, which nothing expands`);

  let pipeline: Record<string, unknown>;
  try {
    pipeline = YAML.parse(text) as Record<string, unknown>;
  } catch (error) {
    return [...problems, `${where}: invalid YAML: ${(error as Error).message}`];
  }
  if (pipeline === null || typeof pipeline !== 'object') return [...problems, `${where}: not a YAML mapping`];

  for (const key of ['source', 'output', 'catalog', 'kafka_brokers', 'run_id']) {
    if (typeof pipeline[key] !== 'string' || pipeline[key] === '') problems.push(`${where}: ${key} is missing or not a string`);
  }
  if (pipeline.source !== 's3://geoshard-sources/urls.parquet') {
    problems.push(`${where}: source is ${String(pipeline.source)}, expected s3://geoshard-sources/urls.parquet`);
  }
  if (pipeline.output !== 's3://geoshard-shards/run-1') {
    problems.push(`${where}: output is ${String(pipeline.output)}, expected s3://geoshard-shards/run-1`);
  }

  if (typeof pipeline.catalog === 'string') {
    let catalog: URL | undefined;
    try {
      catalog = new URL(pipeline.catalog);
    } catch {
      problems.push(`${where}: catalog "${pipeline.catalog}" is not a URL`);
    }
    if (catalog && catalog.protocol !== 'postgres:' && catalog.protocol !== 'postgresql:') {
      problems.push(`${where}: catalog must be a postgres:// URL`);
    }
    if (catalog && catalog.password !== '') {
      problems.push(`${where}: catalog contains a password; the password belongs in GEOSHARD_CATALOG_URL from a Secret`);
    }
  }
  if (typeof pipeline.kafka_brokers === 'string') {
    for (const broker of pipeline.kafka_brokers.split(',')) {
      if (!/^[A-Za-z0-9.-]+:\d{1,5}$/.test(broker)) problems.push(`${where}: kafka_brokers entry "${broker}" is not host:port`);
    }
  }

  if (!validatePipelineSchema(pipeline)) {
    for (const error of validatePipelineSchema.errors ?? []) {
      problems.push(`${where}: schemas/pipeline.schema.json: ${error.instancePath || '(root)'} ${error.message ?? ''} ${JSON.stringify(error.params)}`);
    }
  }
  return problems;
}

/** Compares the catalog URLs of a pipeline and of GEOSHARD_CATALOG_URL, passwords aside. */
function sameDatabase(pipelineCatalog: string, environmentCatalog: string): boolean {
  const withoutPassword = (url: string): string => {
    const parsed = new URL(url.replace(/\$\{[^}]*\}/g, 'INTERPOLATED'));
    parsed.password = '';
    return parsed.href;
  };
  return withoutPassword(pipelineCatalog) === withoutPassword(environmentCatalog);
}

// ---------------------------------------------------------------------------------------
// Compose checks

function composeEnvironment(service: ComposeService): Record<string, string> {
  const environment: Record<string, string> = {};
  if (Array.isArray(service.environment)) {
    for (const entry of service.environment) {
      const separator = entry.indexOf('=');
      if (separator === -1) environment[entry] = '';
      else environment[entry.slice(0, separator)] = entry.slice(separator + 1);
    }
  } else {
    for (const [name, value] of Object.entries(service.environment ?? {})) environment[name] = value === null ? '' : String(value);
  }
  return environment;
}

function dependencies(service: ComposeService): Record<string, string> {
  if (Array.isArray(service.depends_on)) {
    return Object.fromEntries(service.depends_on.map((name) => [name, 'service_started']));
  }
  return Object.fromEntries(
    Object.entries(service.depends_on ?? {}).map(([name, settings]) => [name, settings.condition ?? 'service_started']),
  );
}

/** Returns the host address a port entry binds to, or undefined when it binds every interface. */
function publishedHostIp(port: string | number | { host_ip?: string }): string | undefined {
  if (typeof port === 'number') return undefined;
  if (typeof port === 'object') return port.host_ip;
  const mapping = port.replace(/\/(tcp|udp|sctp)$/, '');
  const bracketed = /^\[([^\]]+)\]:/.exec(mapping);
  if (bracketed) return bracketed[1];
  const parts = mapping.split(':');
  return parts.length === 3 ? parts[0] : undefined;
}

/** Converts a compose duration such as "120s" or "2m" to seconds. */
function durationSeconds(duration: string | undefined): number | undefined {
  if (duration === undefined || !/^(\d+(h|m|s|ms))+$/.test(duration)) return undefined;
  const factors: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };
  let seconds = 0;
  for (const match of duration.matchAll(/(\d+)(h|ms|m|s)/g)) seconds += Number(match[1]) * factors[match[2]!]!;
  return seconds;
}

const INTERPOLATION = /^\$\{[A-Z0-9_]+:\?[^}]*\}$/;

/**
 * Checks that a value with credentials is a required ${VAR:?message} interpolation, or a
 * URL whose password is one, so that compose.yaml contains no credential itself.
 */
function credentialProblem(where: string, name: string, value: string): string | undefined {
  if (/PASSWORD|SECRET|ACCESS_KEY/.test(name) && !INTERPOLATION.test(value)) {
    return `${where}: ${name} must be a required \${VAR:?message} interpolation, not an inline value`;
  }
  // Interpolations may contain ":" and "/" in their messages, so they are masked first.
  const masked = value.replace(/\$\{[A-Z0-9_]+:\?[^}]*\}/g, 'INTERPOLATED');
  const password = /^[a-z0-9+.-]+:\/\/[^/@:]*:([^/@]*)@/.exec(masked)?.[1];
  if (password !== undefined && password !== 'INTERPOLATED') {
    return `${where}: the password in ${name} must be a required \${VAR:?message} interpolation`;
  }
  return undefined;
}

function checkCompose(compose: ComposeFile, composeDir: string): string[] {
  const problems: string[] = [];
  const services = compose.services ?? {};
  const names = Object.keys(services);
  if (names.length === 0) return ['compose.yaml: no services'];

  for (const [name, service] of Object.entries(services)) {
    const where = `compose service ${name}`;
    if (service.image === undefined && service.build === undefined) problems.push(`${where}: has neither image nor build`);
    if (service.network_mode === 'host') problems.push(`${where}: network_mode host exposes every port on every interface`);

    for (const [dependency, condition] of Object.entries(dependencies(service))) {
      const target = services[dependency];
      if (target === undefined) {
        problems.push(`${where}: depends_on names unknown service ${dependency}`);
        continue;
      }
      if (!['service_started', 'service_healthy', 'service_completed_successfully'].includes(condition)) {
        problems.push(`${where}: depends_on ${dependency} has unknown condition ${condition}`);
      }
      if (condition === 'service_healthy' && target.healthcheck?.test === undefined) {
        problems.push(`${where}: waits for ${dependency} to be healthy, but ${dependency} has no healthcheck`);
      }
      if (condition === 'service_completed_successfully' && target.restart !== undefined && target.restart !== 'no') {
        problems.push(`${where}: waits for ${dependency} to complete, but ${dependency} restarts (${target.restart})`);
      }
    }

    for (const port of service.ports ?? []) {
      const hostIp = publishedHostIp(port);
      if (hostIp !== '127.0.0.1') {
        problems.push(`${where}: port ${JSON.stringify(port)} is published on ${hostIp ?? 'every interface'}, expected 127.0.0.1`);
      }
    }

    for (const volume of service.volumes ?? []) {
      const source = typeof volume === 'string' ? volume.split(':')[0]! : (volume.source ?? '');
      if (source.startsWith('.') || source.startsWith('/')) {
        if (!existsSync(path.resolve(composeDir, source))) problems.push(`${where}: bind mount source ${source} does not exist`);
      } else if (source !== '' && !(source in (compose.volumes ?? {}))) {
        problems.push(`${where}: volume ${source} is not declared under the top-level volumes`);
      }
    }

    if (typeof service.build === 'object') {
      const context = path.resolve(composeDir, service.build.context ?? '.');
      if (!existsSync(path.join(context, service.build.dockerfile ?? 'Dockerfile'))) {
        problems.push(`${where}: the Dockerfile of build ${JSON.stringify(service.build)} does not exist`);
      }
    }

    for (const [variable, value] of Object.entries(composeEnvironment(service))) {
      const problem = credentialProblem(where, variable, value);
      if (problem) problems.push(problem);
    }
  }

  const worker = services.worker;
  if (worker === undefined) {
    problems.push('compose.yaml: no worker service');
  } else {
    if (worker.deploy?.replicas !== 3) problems.push(`compose worker: deploy.replicas is ${String(worker.deploy?.replicas)}, expected 3`);
    if (durationSeconds(worker.stop_grace_period) !== 120) {
      problems.push(`compose worker: stop_grace_period is ${String(worker.stop_grace_period)}, expected 120s`);
    }
  }

  const commands: Record<string, string> = { submit: 'submit', worker: 'worker', status: 'status' };
  for (const [name, command] of Object.entries(commands)) {
    const service = services[name];
    if (service === undefined) {
      problems.push(`compose.yaml: no ${name} service`);
      continue;
    }
    if (JSON.stringify(service.command) !== JSON.stringify([command, PIPELINE_PATH])) {
      problems.push(`compose ${name}: command is ${JSON.stringify(service.command)}, expected ["${command}", "${PIPELINE_PATH}"]`);
    }
    const environment = composeEnvironment(service);
    for (const variable of GEOSHARD_ENV) {
      if (!(variable in environment)) problems.push(`compose ${name}: environment variable ${variable} is missing`);
    }
    const mountsPipeline = (service.volumes ?? []).some(
      (volume) => typeof volume === 'string' && volume.split(':')[1] === PIPELINE_PATH,
    );
    if (!mountsPipeline) problems.push(`compose ${name}: does not mount a pipeline file at ${PIPELINE_PATH}`);
  }

  for (const name of ['create-topics', 'create-buckets', 'submit']) {
    const service = services[name];
    if (service === undefined) problems.push(`compose.yaml: no ${name} one-shot service`);
    else if (service.restart !== 'no') problems.push(`compose ${name}: a one-shot service needs restart: "no"`);
  }
  return problems;
}

/** Returns the text of a compose service's command, joined when it is a list. */
function composeScript(service: ComposeService | undefined): string {
  if (service === undefined) return '';
  return Array.isArray(service.command) ? service.command.join('\n') : (service.command ?? '');
}

// ---------------------------------------------------------------------------------------
// Dockerfile checks

interface Instruction {
  keyword: string;
  argument: string;
}

/** Splits a Dockerfile into instructions, joining continued lines and dropping comments. */
function parseDockerfile(text: string): Instruction[] {
  const instructions: Instruction[] = [];
  let current = '';
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed.startsWith('#') || (trimmed === '' && current === '')) continue;
    if (trimmed.endsWith('\\')) {
      current += `${trimmed.slice(0, -1)} `;
      continue;
    }
    current += trimmed;
    const match = /^(\S+)\s*(.*)$/.exec(current);
    if (match) instructions.push({ keyword: match[1]!.toUpperCase(), argument: match[2]! });
    current = '';
  }
  return instructions;
}

function checkDockerfile(text: string, dockerignore: string): string[] {
  const problems: string[] = [];
  if (!text.includes('docker build -f infra/deploy/Dockerfile')) {
    problems.push('Dockerfile: the header must say that the build context is the repository root (docker build -f infra/deploy/Dockerfile .)');
  }

  const instructions = parseDockerfile(text);
  const args = new Map<string, string>();
  const stages: { name?: string; image: string; instructions: Instruction[] }[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'ARG' && stages.length === 0) {
      const [name, value] = instruction.argument.split('=');
      if (name && value) args.set(name, value);
    }
    if (instruction.keyword === 'FROM') {
      const [image, as, name] = instruction.argument.split(/\s+/);
      const resolved = (image ?? '').replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced?: string, bare?: string) => args.get(braced ?? bare ?? '') ?? '');
      stages.push({ name: as?.toUpperCase() === 'AS' ? name : undefined, image: resolved, instructions: [] });
      continue;
    }
    stages.at(-1)?.instructions.push(instruction);
  }

  const final = stages.at(-1);
  if (final === undefined || stages.length < 2) return [...problems, 'Dockerfile: expected a build stage and a runtime stage'];
  for (const stage of stages) {
    if (stage.image !== 'node:20-bookworm-slim') problems.push(`Dockerfile: stage ${stage.name ?? '(unnamed)'} is based on ${stage.image}, expected node:20-bookworm-slim`);
  }

  const buildRuns = stages.slice(0, -1).flatMap((stage) => stage.instructions.filter((instruction) => instruction.keyword === 'RUN'));
  if (!buildRuns.some((run) => /\btsc\b/.test(run.argument))) problems.push('Dockerfile: no build stage runs tsc');

  const finalOf = (keyword: string): Instruction[] => final.instructions.filter((instruction) => instruction.keyword === keyword);
  if (!finalOf('RUN').some((run) => /\bnpm ci\b/.test(run.argument) && run.argument.includes('--omit=dev'))) {
    problems.push('Dockerfile: the runtime stage does not run npm ci --omit=dev');
  }

  const user = finalOf('USER').at(-1)?.argument.split(':')[0];
  if (user === undefined) problems.push('Dockerfile: the runtime stage sets no USER, so the container runs as root');
  else if (user === 'root' || user === '0') problems.push(`Dockerfile: USER ${user} is root`);

  const entrypoint = finalOf('ENTRYPOINT').at(-1)?.argument;
  let entrypointArray: unknown;
  try {
    entrypointArray = entrypoint === undefined ? undefined : JSON.parse(entrypoint);
  } catch {
    entrypointArray = undefined;
  }
  if (JSON.stringify(entrypointArray) !== JSON.stringify(['node', 'bin/geoshard.js'])) {
    problems.push(`Dockerfile: ENTRYPOINT is ${String(entrypoint)}, expected the exec form ["node", "bin/geoshard.js"]`);
  }

  const stageNames = new Set(stages.map((stage) => stage.name).filter((name) => name !== undefined));
  const ignored = new Set(dockerignore.split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#')));
  for (const stage of stages) {
    for (const copy of stage.instructions.filter((instruction) => instruction.keyword === 'COPY')) {
      const words = copy.argument.split(/\s+/);
      const from = words.find((word) => word.startsWith('--from='))?.slice('--from='.length);
      const paths = words.filter((word) => !word.startsWith('--'));
      if (from !== undefined) {
        if (!stageNames.has(from)) problems.push(`Dockerfile: COPY --from=${from} names no stage`);
        continue;
      }
      for (const source of paths.slice(0, -1)) {
        if (!existsSync(path.join(repoRoot, source))) problems.push(`Dockerfile: COPY source ${source} does not exist in the repository`);
        if (ignored.has(source)) problems.push(`Dockerfile: COPY source ${source} is excluded by Dockerfile.dockerignore`);
      }
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------
// Tests

const manifests = loadManifests();
const compose = loadCompose();
const kustomization = YAML.parse(readFileSync(path.join(k8sDir, 'kustomization.yaml'), 'utf8')) as Record<string, unknown>;
const k8sFiles = readdirSync(k8sDir).filter((file) => isYamlFile(file) && file !== 'kustomization.yaml').sort();

function setManifest(copy: Manifest[], kind: string, name: string, change: (object: K8sObject) => void): Manifest[] {
  const object = copy.find((manifest) => manifest.object.kind === kind && manifest.object.metadata?.name === name)?.object;
  assert.ok(object, `${kind} ${name} not found`);
  change(object);
  return copy;
}

function workerContainer(object: K8sObject): Container {
  const container = object.spec?.template?.spec?.containers.find((candidate) => candidate.name === 'worker');
  assert.ok(container, 'worker container not found');
  return container;
}

function workerEnv(object: K8sObject, name: string): EnvVar {
  const variable = workerContainer(object).env?.find((candidate) => candidate.name === name);
  assert.ok(variable, `worker env ${name} not found`);
  return variable;
}

describe('deploy YAML files', () => {
  it('parse without errors or warnings', () => {
    const files = listFiles(deployDir).filter(isYamlFile);
    const names = files.map(relative);
    assert.ok(names.includes('infra/deploy/compose.yaml'), 'compose.yaml not found');
    assert.ok(names.includes('infra/deploy/k8s/kustomization.yaml'), 'kustomization.yaml not found');
    for (const file of files) {
      assert.doesNotThrow(() => parseYamlDocuments(file), `${relative(file)} must parse`);
    }
  });

  it('report syntax errors in any document', () => {
    const documents = YAML.parseAllDocuments('a: 1\n---\nb: [1, 2\n');
    assert.ok(documents.some((document) => document.errors.length > 0));
  });
});

describe('Kubernetes manifests', () => {
  it('have valid kinds, names and namespace', () => {
    assert.ok(manifests.length >= 9, `expected at least 9 objects, found ${manifests.length}`);
    assert.deepEqual(checkManifestStructure(manifests), []);
  });

  it('reject wrong apiVersion, kind and namespace', () => {
    const wrongVersion = setManifest(clone(manifests), 'Deployment', 'geoshard-worker', (object) => {
      object.apiVersion = 'extensions/v1beta1';
    });
    assert.match(checkManifestStructure(wrongVersion).join('\n'), /apiVersion is extensions\/v1beta1, expected apps\/v1/);

    const wrongKind = setManifest(clone(manifests), 'PodDisruptionBudget', 'geoshard-worker', (object) => {
      object.kind = 'Service';
    });
    assert.match(checkManifestStructure(wrongKind).join('\n'), /kind Service is not one of/);

    const otherNamespace = setManifest(clone(manifests), 'Job', 'geoshard-submit', (object) => {
      object.metadata!.namespace = 'default';
    });
    assert.match(checkManifestStructure(otherNamespace).join('\n'), /metadata.namespace is default, expected geoshard/);

    const unnamed = setManifest(clone(manifests), 'ConfigMap', 'geoshard-env', (object) => {
      delete object.metadata!.name;
    });
    assert.match(checkManifestStructure(unnamed).join('\n'), /missing metadata.name/);
  });

  it('have selectors that match the workers', () => {
    assert.deepEqual(checkSelectors(manifests), []);
  });

  it('reject selectors that match no pods', () => {
    const deployment = setManifest(clone(manifests), 'Deployment', 'geoshard-worker', (object) => {
      object.spec!.selector!.matchLabels!['app.kubernetes.io/component'] = 'wroker';
    });
    assert.match(checkSelectors(deployment).join('\n'), /does not match spec.template.metadata.labels/);

    const budget = setManifest(clone(manifests), 'PodDisruptionBudget', 'geoshard-worker', (object) => {
      object.spec!.selector = { matchLabels: { app: 'other' } };
    });
    assert.match(checkSelectors(budget).join('\n'), /matches the pods of no Deployment/);

    const autoscaler = setManifest(clone(manifests), 'HorizontalPodAutoscaler', 'geoshard-worker', (object) => {
      object.spec!.scaleTargetRef!.name = 'geoshard-workers';
    });
    assert.match(checkSelectors(autoscaler).join('\n'), /scaleTargetRef .* is not an apps\/v1 Deployment/);
  });

  it('refer only to defined ConfigMaps and Secrets', () => {
    assert.deepEqual(checkReferences(manifests), []);
  });

  it('reject a misspelt ConfigMap, Secret or key', () => {
    const configMapName = setManifest(clone(manifests), 'Deployment', 'geoshard-worker', (object) => {
      workerEnv(object, 'AWS_REGION').valueFrom!.configMapKeyRef!.name = 'geoshard-evn';
    });
    assert.match(checkReferences(configMapName).join('\n'), /env AWS_REGION: ConfigMap "geoshard-evn" is not defined/);

    const secretKey = setManifest(clone(manifests), 'Job', 'geoshard-submit', (object) => {
      const variable = object.spec!.template!.spec!.containers[0]!.env!.find((candidate) => candidate.name === 'AWS_SECRET_ACCESS_KEY');
      variable!.valueFrom!.secretKeyRef!.key = 'AWS_SECRET_KEY';
    });
    assert.match(checkReferences(secretKey).join('\n'), /Secret "geoshard-credentials" has no key "AWS_SECRET_KEY"/);

    const volume = setManifest(clone(manifests), 'Deployment', 'geoshard-worker', (object) => {
      object.spec!.template!.spec!.volumes!.find((candidate) => candidate.name === 'pipeline')!.configMap!.name = 'geoshard-pipline';
    });
    assert.match(checkReferences(volume).join('\n'), /volume pipeline: ConfigMap "geoshard-pipline" is not defined/);

    const mount = setManifest(clone(manifests), 'Deployment', 'geoshard-worker', (object) => {
      workerContainer(object).volumeMounts![0]!.name = 'pipelines';
    });
    assert.match(checkReferences(mount).join('\n'), /volumeMount "pipelines" names no volume/);
  });

  it('give the worker its command, resources and settings', () => {
    assert.deepEqual(checkWorkerDeployment(findObject(manifests, 'Deployment', 'geoshard-worker')), []);
  });

  it('reject a worker without a variable or with inline credentials', () => {
    const worker = clone(findObject(manifests, 'Deployment', 'geoshard-worker'));
    const container = workerContainer(worker);
    container.env = container.env!.filter((variable) => variable.name !== 'GEOSHARD_LOG_LEVEL');
    workerEnv(worker, 'AWS_SECRET_ACCESS_KEY').valueFrom = undefined;
    workerEnv(worker, 'AWS_SECRET_ACCESS_KEY').value = 'inline';
    container.resources!.limits!.cpu = '2';
    const problems = checkWorkerDeployment(worker).join('\n');
    assert.match(problems, /environment variable GEOSHARD_LOG_LEVEL is missing/);
    assert.match(problems, /AWS_SECRET_ACCESS_KEY must come from a secretKeyRef/);
    assert.match(problems, /resources.limits.cpu is 2, expected one CPU/);
  });

  it('give the submit Job every variable and the pipeline', () => {
    const submit = findObject(manifests, 'Job', 'geoshard-submit');
    const spec = submit.spec!.template!.spec!;
    const container = spec.containers.find((candidate) => candidate.name === 'submit');
    assert.ok(container, 'submit container not found');
    assert.deepEqual(container.args, ['submit', PIPELINE_PATH]);
    assert.equal(container.image, 'geoshard:latest');
    assert.ok(spec.restartPolicy === 'Never' || spec.restartPolicy === 'OnFailure', `restartPolicy ${String(spec.restartPolicy)}`);
    assert.deepEqual(checkGeoshardEnv('submit', container), []);
    assert.deepEqual(checkPipelineMount('submit', spec, container), []);
  });

  it('create both topics with replication factor 3', () => {
    const job = findObject(manifests, 'Job', 'geoshard-create-topics');
    const container = job.spec!.template!.spec!.containers[0]!;
    assert.match(container.image ?? '', /^apache\/kafka:3\.9\.\d+$/);
    const script = [...(container.command ?? []), ...(container.args ?? [])].join('\n');
    assert.deepEqual(checkTopics('topics Job', script, 3), []);
    assert.match(checkTopics('topics Job', script.replaceAll('geoshard.events', 'geoshard.event'), 3).join('\n'), /does not create topic geoshard.events/);
    assert.match(checkTopics('topics Job', script, 1).join('\n'), /replication factor 3, expected 1/);
  });

  it('scale workers up to the units partitions', () => {
    const job = findObject(manifests, 'Job', 'geoshard-create-topics');
    const container = job.spec!.template!.spec!.containers[0]!;
    const units = topicsInScript((container.args ?? []).join('\n')).get(UNITS_TOPIC);
    assert.ok(units, `${UNITS_TOPIC} not created`);

    const autoscaler = findObject(manifests, 'HorizontalPodAutoscaler', 'geoshard-worker');
    const { minReplicas, maxReplicas, metrics } = autoscaler.spec!;
    assert.equal(minReplicas, 3);
    assert.ok(maxReplicas !== undefined, 'the autoscaler sets no maxReplicas');
    assert.ok(maxReplicas >= minReplicas!, `maxReplicas ${maxReplicas} is below minReplicas ${String(minReplicas)}`);
    assert.ok(maxReplicas <= units.partitions, `maxReplicas ${maxReplicas} exceeds the ${units.partitions} partitions of ${UNITS_TOPIC}`);
    assert.ok(metrics?.some((metric) => metric.type === 'Resource' && metric.resource?.name === 'cpu'), 'the autoscaler must scale on CPU');

    const budget = findObject(manifests, 'PodDisruptionBudget', 'geoshard-worker');
    assert.ok(budget.spec?.minAvailable !== undefined || budget.spec?.maxUnavailable !== undefined, 'the budget sets no limit');
  });

  it('point the pipeline and the variables at the same services', () => {
    const pipeline = YAML.parse(findObject(manifests, 'ConfigMap', 'geoshard-pipeline').data!['pipeline.yaml']!) as Record<string, string>;
    const environment = findObject(manifests, 'ConfigMap', 'geoshard-env').data!;
    const secret = findObject(manifests, 'Secret', 'geoshard-credentials').stringData!;
    assert.equal(pipeline.kafka_brokers, environment.GEOSHARD_KAFKA_BROKERS, 'kafka_brokers differs from GEOSHARD_KAFKA_BROKERS');
    assert.ok(sameDatabase(pipeline.catalog!, secret.GEOSHARD_CATALOG_URL!), 'catalog and GEOSHARD_CATALOG_URL name different databases');
    assert.ok(!sameDatabase(pipeline.catalog!, 'postgres://geoshard@other:5432/geoshard'), 'sameDatabase must compare hosts');
  });

  it('keep placeholders in the example Secret', () => {
    const secret = findObject(manifests, 'Secret', 'geoshard-credentials');
    const values = {
      ...secret.stringData,
      ...Object.fromEntries(Object.entries(secret.data ?? {}).map(([key, value]) => [key, Buffer.from(value, 'base64').toString('utf8')])),
    };
    for (const name of SECRET_ENV) {
      assert.ok(name in values, `Secret key ${name} is missing`);
      assert.match(values[name]!, /REPLACE_ME/, `Secret value of ${name} must be a marked placeholder`);
    }
  });

  it('carry a valid pipeline in the ConfigMap', () => {
    const configMap = findObject(manifests, 'ConfigMap', 'geoshard-pipeline');
    const text = configMap.data?.['pipeline.yaml'];
    assert.equal(typeof text, 'string', 'ConfigMap geoshard-pipeline has no pipeline.yaml key');
    assert.deepEqual(checkPipelineText('ConfigMap pipeline.yaml', text!), []);
  });

  it('reject pipelines with placeholders or passwords', () => {
    const text = findObject(manifests, 'ConfigMap', 'geoshard-pipeline').data!['pipeline.yaml']!;
    assert.match(checkPipelineText('p', text.replace('run-1', '${RUN}')).join('\n'), /contains a \$\{...\} placeholder/);
    assert.match(checkPipelineText('p', text.replace('postgres://geoshard@', 'postgres://geoshard:hunter2@')).join('\n'), /catalog contains a password/);
    assert.match(checkPipelineText('p', text.replace(/^kafka_brokers:.*$/m, '')).join('\n'), /kafka_brokers is missing/);
    assert.match(checkPipelineText('p', `${text}\nshard_sise: 5\n`).join('\n'), /must NOT have additional properties/);
    assert.match(checkPipelineText('p', 'source: [unclosed').join('\n'), /invalid YAML/);
  });

  it('list exactly the folder in kustomization.yaml', () => {
    assert.deepEqual(checkKustomization(kustomization, k8sFiles), []);
  });

  it('reject a kustomization that differs from the folder', () => {
    const missing = { ...kustomization, resources: (kustomization.resources as string[]).filter((file) => file !== 'worker-pdb.yaml') };
    assert.match(checkKustomization(missing, k8sFiles).join('\n'), /worker-pdb.yaml is in the folder but not in resources/);
    const extra = { ...kustomization, resources: [...(kustomization.resources as string[]), 'service.yaml'] };
    assert.match(checkKustomization(extra, k8sFiles).join('\n'), /resource service.yaml does not exist/);
  });
});

describe('compose stack', () => {
  it('has valid services and dependencies', () => {
    assert.deepEqual(checkCompose(compose, deployDir), []);
  });

  it('rejects public ports and unknown dependencies', () => {
    const cases: [string, (copy: ComposeFile) => void, RegExp][] = [
      ['every interface', (copy) => { copy.services!.minio!.ports = ['9000:9000']; }, /published on every interface/],
      ['0.0.0.0', (copy) => { copy.services!.minio!.ports = ['0.0.0.0:9000:9000']; }, /published on 0.0.0.0/],
      ['container port only', (copy) => { copy.services!.minio!.ports = ['9000']; }, /published on every interface/],
      ['long syntax', (copy) => { copy.services!.postgres!.ports = [{ target: 5432, published: 5432 }]; }, /published on every interface/],
      ['host network', (copy) => { copy.services!.kafka!.network_mode = 'host'; }, /network_mode host/],
      ['unknown service', (copy) => { copy.services!.submit!.depends_on = { postgress: { condition: 'service_healthy' } }; }, /unknown service postgress/],
      ['no healthcheck', (copy) => { delete copy.services!.postgres!.healthcheck; }, /postgres has no healthcheck/],
      ['no image', (copy) => { delete copy.services!.postgres!.image; }, /postgres: has neither image nor build/],
      ['two replicas', (copy) => { copy.services!.worker!.deploy = { replicas: 2 }; }, /deploy.replicas is 2, expected 3/],
      ['inline secret', (copy) => { (copy.services!.worker!.environment as Record<string, string>).AWS_SECRET_ACCESS_KEY = 'minio123'; }, /AWS_SECRET_ACCESS_KEY must be a required/],
      ['password in URL', (copy) => { (copy.services!.worker!.environment as Record<string, string>).GEOSHARD_CATALOG_URL = 'postgres://geoshard:pw@postgres:5432/geoshard'; }, /password in GEOSHARD_CATALOG_URL must be/],
      ['missing variable', (copy) => { delete (copy.services!.submit!.environment as Record<string, string>).AWS_REGION; }, /compose submit: environment variable AWS_REGION is missing/],
    ];
    for (const [name, change, expected] of cases) {
      const copy = clone(compose);
      change(copy);
      assert.match(checkCompose(copy, deployDir).join('\n'), expected, name);
    }
  });

  it('creates both topics with replication factor 1', () => {
    const script = composeScript(compose.services?.['create-topics']);
    assert.deepEqual(checkTopics('compose create-topics', script, 1), []);
    const units = topicsInScript(script).get(UNITS_TOPIC);
    assert.ok(units, `${UNITS_TOPIC} not created`);
    const workers = compose.services?.worker?.deploy?.replicas ?? 0;
    assert.ok(units.partitions >= workers, `${units.partitions} partitions of ${UNITS_TOPIC} for ${workers} workers`);
    assert.match(compose.services?.kafka?.image ?? '', /^apache\/kafka:3\.9\.\d+$/);
    assert.match(compose.services?.postgres?.image ?? '', /^postgres:15(\.|-|$)/);
  });

  it('matches and creates the buckets of its pipeline', () => {
    const text = readFileSync(path.join(deployDir, 'pipeline.yaml'), 'utf8');
    assert.deepEqual(checkPipelineText('infra/deploy/pipeline.yaml', text), []);
    const pipeline = YAML.parse(text) as { source: string; output: string; catalog: string; kafka_brokers: string };
    const environment = composeEnvironment(compose.services!.worker!);
    assert.equal(pipeline.kafka_brokers, environment.GEOSHARD_KAFKA_BROKERS, 'kafka_brokers differs from GEOSHARD_KAFKA_BROKERS');
    assert.ok(sameDatabase(pipeline.catalog, environment.GEOSHARD_CATALOG_URL!), 'catalog and GEOSHARD_CATALOG_URL name different databases');
    const script = composeScript(compose.services?.['create-buckets']);
    for (const location of [pipeline.source, pipeline.output]) {
      const bucket = new URL(location).host;
      assert.match(script, new RegExp(`mc mb .*geoshard/${bucket}\\b`), `create-buckets does not create bucket ${bucket}`);
    }
  });

  it('documents every required variable in .env.example', () => {
    const example = readFileSync(path.join(deployDir, '.env.example'), 'utf8');
    const defined = new Map(
      example.split('\n').filter((line) => /^[A-Z0-9_]+=/.test(line)).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
    );
    const required = new Set([...readFileSync(path.join(deployDir, 'compose.yaml'), 'utf8').matchAll(/\$\{([A-Z0-9_]+):\?/g)].map((match) => match[1]!));
    assert.ok(required.size > 0, 'compose.yaml requires no variable');
    for (const name of required) assert.ok(defined.has(name), `.env.example does not define ${name}`);
    for (const [name, value] of defined) {
      if (/PASSWORD|SECRET/.test(name)) assert.match(value, /REPLACE/, `${name} in .env.example must be a marked placeholder`);
    }
    assert.match(readFileSync(path.join(deployDir, '.gitignore'), 'utf8'), /^\.env$/m, 'infra/deploy/.gitignore must ignore .env');
  });
});

describe('Dockerfile', () => {
  const dockerfile = readFileSync(path.join(deployDir, 'Dockerfile'), 'utf8');
  const dockerignore = readFileSync(path.join(deployDir, 'Dockerfile.dockerignore'), 'utf8');

  it('builds a non-root image with the geoshard entrypoint', () => {
    assert.deepEqual(checkDockerfile(dockerfile, dockerignore), []);
  });

  it('rejects root, a shell entrypoint and missing sources', () => {
    const cases: [string, string, RegExp][] = [
      ['root user', dockerfile.replace(/^USER .*$/m, 'USER root'), /USER root is root/],
      ['uid 0', dockerfile.replace(/^USER .*$/m, 'USER 0:0'), /USER 0 is root/],
      ['no user', dockerfile.replace(/^USER .*$/m, ''), /sets no USER/],
      ['shell entrypoint', dockerfile.replace(/^ENTRYPOINT .*$/m, 'ENTRYPOINT node bin/geoshard.js'), /ENTRYPOINT is node bin\/geoshard.js/],
      ['missing source', dockerfile.replace('COPY schemas ./schemas', 'COPY schema ./schemas'), /COPY source schema does not exist/],
      ['dev dependencies', dockerfile.replaceAll('--omit=dev', ''), /does not run npm ci --omit=dev/],
      ['other base image', dockerfile.replace('node:20-bookworm-slim', 'node:22-alpine'), /based on node:22-alpine/],
    ];
    for (const [name, text, expected] of cases) {
      assert.match(checkDockerfile(text, dockerignore).join('\n'), expected, name);
    }
    assert.match(checkDockerfile(dockerfile, `${dockerignore}\nbin\n`).join('\n'), /COPY source bin is excluded/);
  });
});
