import * as countryCoder from '@rapideditor/country-coder';
import { EU_SPECIAL_TERRITORIES, POLICY_PRESETS, isPolicyPresetName } from './territories.js';

/** Source of a piece of location evidence, in order of precedence. */
export type LocationSource = 'exif_gps' | 'declared_coordinates' | 'declared_country';

export interface LocationEvidence {
  source: LocationSource;
  latitude?: number;
  longitude?: number;
  /** The country code as declared in the input row, before normalisation. */
  declared?: string;
  /** ISO 3166-1 alpha-2 code at territory level; null where nothing could be resolved. */
  territory: string | null;
  excluded: boolean;
}

export interface RegionDecision {
  verdict: 'keep' | 'excluded' | 'unknown';
  /** The territory the decision rests on: the excluding one, else the highest-precedence known one. */
  territory: string | null;
  source: LocationSource | null;
  evidence: LocationEvidence[];
}

export interface RegionPolicy {
  /** The specification the policy was parsed from, e.g. `eea-uk` or `exclude:FR,CH`. */
  name: string;
  mode: 'exclude' | 'allow';
  codes: ReadonlySet<string>;
}

const ISO_CODE = /^(?:[A-Za-z]{2,3}|\d{3})$/;

/**
 * Normalises a country or territory code (alpha-2, alpha-3 or numeric, any case, aliases
 * such as UK and EL) to the alpha-2 code at territory level. Returns null for unknown
 * codes and for groupings such as EU or 150 that are not a single territory.
 */
export function normalizeTerritoryCode(code: string): string | null {
  const trimmed = code.trim();
  if (!ISO_CODE.test(trimmed)) return null;
  const feature = countryCoder.feature(trimmed);
  if (!feature) return null;

  const { level, iso1A2, country, groups } = feature.properties;
  if (level === 'country' || level === 'territory') return iso1A2 ?? country ?? null;
  if (level !== 'subterritory') return null;

  // Subterritories carry exceptionally reserved codes (FX, DG, TA...). Only the Canary
  // Islands are named by the policies, so the others map to the territory that contains them.
  if (iso1A2 && EU_SPECIAL_TERRITORIES.includes(iso1A2)) return iso1A2;
  for (const group of groups ?? []) {
    const parent = countryCoder.feature(group);
    if (parent?.properties.level === 'territory' && parent.properties.iso1A2) return parent.properties.iso1A2;
  }
  return country ?? null;
}

/**
 * Parses a policy specification: a preset (`eea-uk`, `eea`, `eu`, `none`), or
 * `exclude:LIST` / `allow:LIST` where LIST is a comma-separated list of codes and presets
 * (`exclude:eea-uk,CH`). `allow:` keeps only the listed territories.
 */
export function parsePolicy(spec: string): RegionPolicy {
  const trimmed = spec.trim();
  if (isPolicyPresetName(trimmed)) {
    return { name: trimmed, mode: 'exclude', codes: new Set(POLICY_PRESETS[trimmed]) };
  }

  const match = /^(exclude|allow):(.*)$/.exec(trimmed);
  if (!match) {
    throw new Error(
      `Invalid policy "${spec}": expected one of ${Object.keys(POLICY_PRESETS).join(', ')}, ` +
        'or exclude:CODES or allow:CODES with comma-separated ISO codes or presets',
    );
  }

  const mode = match[1] as 'exclude' | 'allow';
  const codes = new Set<string>();
  for (const item of (match[2] ?? '').split(',')) {
    const entry = item.trim();
    if (entry === '') continue;
    if (isPolicyPresetName(entry)) {
      for (const code of POLICY_PRESETS[entry]) codes.add(code);
      continue;
    }
    const code = normalizeTerritoryCode(entry);
    if (!code) throw new Error(`Invalid policy "${spec}": "${entry}" is not an ISO 3166-1 country or territory code`);
    codes.add(code);
  }
  if (codes.size === 0) {
    throw new Error(`Invalid policy "${spec}": ${mode}: needs at least one ISO code or preset, such as ${mode}:FR,CH`);
  }
  return { name: trimmed, mode, codes };
}

export function isExcluded(policy: RegionPolicy, territory: string): boolean {
  return policy.mode === 'exclude' ? policy.codes.has(territory) : !policy.codes.has(territory);
}

/**
 * Checks that a coordinate pair can be a real position. (0, 0) counts as missing: it is
 * what cameras and EXIF writers emit for empty or zero rationals.
 */
export function isUsableCoordinate(latitude: number, longitude: number): boolean {
  if (!Number.isFinite(latitude) || !Number.isFinite(longitude)) return false;
  if (Math.abs(latitude) > 90 || Math.abs(longitude) > 180) return false;
  return !(latitude === 0 && longitude === 0);
}

/** Returns the territory-level code of a point, or null at sea or where no feature exists. */
export function territoryAt(latitude: number, longitude: number): string | null {
  // country-coder takes [longitude, latitude]; the default level would return FR for French Guiana.
  return countryCoder.iso1A2Code([longitude, latitude], { level: 'territory' });
}

export interface LocationInputs {
  gps?: { latitude: number; longitude: number } | null;
  declaredCoordinates?: { latitude: number; longitude: number } | null;
  declaredCountry?: string | null;
}

/**
 * Decides where an image comes from and whether the policy excludes it. Any source that
 * places the image in an excluded territory excludes it, whatever the other sources place it in.
 * Unusable coordinates are not evidence; an unknown declared code is evidence of nothing
 * and is recorded with a null territory.
 */
export function decideRegion(policy: RegionPolicy, inputs: LocationInputs): RegionDecision {
  const evidence: LocationEvidence[] = [];
  const addPoint = (source: LocationSource, point: { latitude: number; longitude: number } | null | undefined) => {
    if (!point || !isUsableCoordinate(point.latitude, point.longitude)) return;
    const territory = territoryAt(point.latitude, point.longitude);
    evidence.push({
      source,
      latitude: point.latitude,
      longitude: point.longitude,
      territory,
      excluded: territory !== null && isExcluded(policy, territory),
    });
  };

  addPoint('exif_gps', inputs.gps);
  addPoint('declared_coordinates', inputs.declaredCoordinates);
  if (inputs.declaredCountry) {
    const territory = normalizeTerritoryCode(inputs.declaredCountry);
    evidence.push({
      source: 'declared_country',
      declared: inputs.declaredCountry,
      territory,
      excluded: territory !== null && isExcluded(policy, territory),
    });
  }

  const excluding = evidence.find((item) => item.excluded);
  if (excluding) return { verdict: 'excluded', territory: excluding.territory, source: excluding.source, evidence };

  const known = evidence.find((item) => item.territory !== null);
  if (known) return { verdict: 'keep', territory: known.territory, source: known.source, evidence };

  return { verdict: 'unknown', territory: null, source: null, evidence };
}
