import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decideRegion,
  isExcluded,
  isUsableCoordinate,
  normalizeTerritoryCode,
  parsePolicy,
  territoryAt,
} from '../../src/geo/policy.js';
import { NON_EU_TERRITORIES_OF_MEMBER_STATES } from '../../src/geo/territories.js';

describe('territoryAt', () => {
  const places: [string, number, number, string | null][] = [
    ['Cayenne', 4.9224, -52.3135, 'GF'],
    ['Las Palmas', 28.1235, -15.4363, 'ES'],
    ['Ceuta', 35.8894, -5.3213, 'EA'],
    ['Belfast', 54.5973, -5.9301, 'GB'],
    ['Nuuk', 64.1814, -51.6941, 'GL'],
    ['Noumea', -22.27, 166.45, 'NC'],
    ['Gustavia', 17.9, -62.85, 'BL'],
    ['Mariehamn', 60.1, 19.94, 'AX'],
    ['Longyearbyen', 78.2, 15.6, 'SJ'],
    ['Gibraltar', 36.14, -5.35, 'GI'],
    ['Ponta Delgada', 37.74, -25.67, 'PT'],
  ];
  for (const [name, latitude, longitude, expected] of places) {
    it(`resolves ${name} to ${expected}`, () => {
      assert.equal(territoryAt(latitude, longitude), expected);
    });
  }
});

describe('parsePolicy', () => {
  it('excludes outermost regions under eu', () => {
    const eu = parsePolicy('eu');
    for (const code of ['FR', 'GF', 'RE', 'GP', 'MQ', 'YT', 'MF', 'IC', 'EA', 'AX', 'PT', 'ES']) {
      assert.equal(isExcluded(eu, code), true, code);
    }
  });

  it('keeps overseas countries and territories under every preset', () => {
    for (const preset of ['eu', 'eea', 'eea-uk']) {
      const policy = parsePolicy(preset);
      for (const code of Object.keys(NON_EU_TERRITORIES_OF_MEMBER_STATES)) {
        assert.equal(isExcluded(policy, code), false, `${preset} ${code}`);
      }
    }
  });

  it('separates eu, eea and eea-uk', () => {
    const eu = parsePolicy('eu');
    const eea = parsePolicy('eea');
    const eeaUk = parsePolicy('eea-uk');
    assert.equal(isExcluded(eu, 'NO'), false);
    assert.equal(isExcluded(eea, 'NO'), true);
    assert.equal(isExcluded(eea, 'GB'), false);
    assert.equal(isExcluded(eeaUk, 'GB'), true);
    for (const code of ['SJ', 'CH', 'MC', 'JE', 'IM', 'GI', 'FO']) assert.equal(isExcluded(eeaUk, code), false, code);
  });

  it('excludes nothing under none', () => {
    assert.equal(isExcluded(parsePolicy('none'), 'FR'), false);
  });

  it('reads custom lists with presets and aliases', () => {
    const policy = parsePolicy('exclude:eu,CH,uk');
    assert.equal(isExcluded(policy, 'CH'), true);
    assert.equal(isExcluded(policy, 'GB'), true);
    assert.equal(isExcluded(policy, 'FR'), true);
    assert.equal(isExcluded(policy, 'NO'), false);
  });

  it('keeps only listed territories under allow', () => {
    const policy = parsePolicy('allow:US,CA');
    assert.equal(isExcluded(policy, 'US'), false);
    assert.equal(isExcluded(policy, 'JP'), true);
  });

  it('rejects unknown presets and codes', () => {
    assert.throws(() => parsePolicy('gdpr'), /Invalid policy "gdpr": expected one of eea-uk, eea, eu, none/);
    assert.throws(() => parsePolicy('exclude:FR,ZZ'), /"ZZ" is not an ISO 3166-1 country or territory code/);
    assert.throws(() => parsePolicy('allow:'), /allow: needs at least one ISO code or preset/);
    assert.throws(() => parsePolicy('exclude:'), /exclude: needs at least one ISO code or preset/);
  });
});

describe('normalizeTerritoryCode', () => {
  it('maps aliases, alpha-3 and numeric codes', () => {
    assert.equal(normalizeTerritoryCode('UK'), 'GB');
    assert.equal(normalizeTerritoryCode('EL'), 'GR');
    assert.equal(normalizeTerritoryCode('fra'), 'FR');
    assert.equal(normalizeTerritoryCode('826'), 'GB');
    assert.equal(normalizeTerritoryCode(' gf '), 'GF');
  });

  it('maps subterritories to what the policies name', () => {
    assert.equal(normalizeTerritoryCode('IC'), 'IC');
    assert.equal(normalizeTerritoryCode('FX'), 'FR');
  });

  it('rejects groupings and unknown codes', () => {
    for (const code of ['EU', 'UN', '150', 'ZZ', 'Q25263', 'PT-20', '']) assert.equal(normalizeTerritoryCode(code), null, code);
  });
});

describe('isUsableCoordinate', () => {
  it('treats null island, NaN and out-of-range values as missing', () => {
    assert.equal(isUsableCoordinate(0, 0), false);
    assert.equal(isUsableCoordinate(Number.NaN, 10), false);
    assert.equal(isUsableCoordinate(91, 10), false);
    assert.equal(isUsableCoordinate(10, -181), false);
    assert.equal(isUsableCoordinate(0, 10), true);
  });
});

describe('decideRegion', () => {
  const policy = parsePolicy('eea-uk');

  it('excludes when any source is in an excluded territory', () => {
    const decision = decideRegion(policy, {
      gps: { latitude: 35.6895, longitude: 139.6917 },
      declaredCountry: 'FR',
    });
    assert.equal(decision.verdict, 'excluded');
    assert.equal(decision.territory, 'FR');
    assert.equal(decision.source, 'declared_country');
    assert.equal(decision.evidence.length, 2);
  });

  it('prefers EXIF GPS over declared sources when keeping', () => {
    const decision = decideRegion(policy, {
      gps: { latitude: 35.6895, longitude: 139.6917 },
      declaredCoordinates: { latitude: 40.7128, longitude: -74.006 },
    });
    assert.equal(decision.verdict, 'keep');
    assert.equal(decision.territory, 'JP');
    assert.equal(decision.source, 'exif_gps');
  });

  it('ignores GPS at (0, 0) and reports unknown', () => {
    const decision = decideRegion(policy, { gps: { latitude: 0, longitude: 0 } });
    assert.equal(decision.verdict, 'unknown');
    assert.deepEqual(decision.evidence, []);
  });

  it('records a point with no territory as evidence of nothing', () => {
    const decision = decideRegion(policy, { declaredCoordinates: { latitude: -40, longitude: -120 } });
    assert.equal(decision.verdict, 'unknown');
    assert.equal(decision.evidence[0]?.territory, null);
  });

  it('keeps Greenland under eea-uk', () => {
    const decision = decideRegion(policy, { gps: { latitude: 64.1814, longitude: -51.6941 } });
    assert.equal(decision.verdict, 'keep');
    assert.equal(decision.territory, 'GL');
  });
});
