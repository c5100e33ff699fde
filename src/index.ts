/** The public API of geoshard, for use as a library. */
export { resolveOptions, loadPipelineFile, type IngestOptions } from './config/options.js';
export { ingest, type RunSummary, type StatusLine } from './pipeline/ingest.js';
export { REASONS, RejectionError, type Reason } from './pipeline/reasons.js';
export { decideRegion, parsePolicy, normalizeTerritoryCode, territoryAt, type RegionDecision, type RegionPolicy } from './geo/policy.js';
export { POLICY_PRESETS, NON_EU_TERRITORIES_OF_MEMBER_STATES } from './geo/territories.js';
export { perceptualHash, hammingDistance } from './dedup/phash.js';
export { submit } from './distributed/submit.js';
export { startWorker } from './distributed/worker.js';
export { readRunStatus } from './distributed/status.js';
export { sinkhornKnopp, swavLoss } from './train/swav-math.js';
