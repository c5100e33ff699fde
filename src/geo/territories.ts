/**
 * Territory sets behind the data-protection policies.
 *
 * Codes are ISO 3166-1 alpha-2 codes at territory level, as returned by
 * @rapideditor/country-coder with `level: 'territory'`, plus the exceptionally reserved
 * codes IC (Canary Islands) and EA (Ceuta, Melilla) that users may declare.
 *
 * Legal sources:
 * - Treaty on European Union, art. 52, and Treaty on the Functioning of the European
 *   Union (TFEU), art. 355: the Treaties apply to the 27 member states, to the outermost
 *   regions listed in TFEU art. 349 and to the Aland Islands; they do not apply to the
 *   Faroe Islands (art. 355(5)(a)).
 * - TFEU Annex II: the overseas countries and territories (OCTs), which are associated
 *   with the Union but are not part of it.
 * - EEA Agreement, art. 126 and Protocol 40: the agreement extends GDPR to Iceland,
 *   Liechtenstein and Norway, but not to Svalbard; Bouvet Island and Jan Mayen are
 *   outside it too.
 * - UK GDPR (Data Protection Act 2018): applies in the United Kingdom, not in the Crown
 *   Dependencies (Jersey, Guernsey, Isle of Man) nor in the British Overseas Territories
 *   (Gibraltar included).
 */

/** Member states of the European Union (2020 onwards), metropolitan parts. */
export const EU_MEMBER_STATES: readonly string[] = [
  'AT', 'BE', 'BG', 'CY', 'CZ', 'DE', 'DK', 'EE', 'ES', 'FI', 'FR', 'GR', 'HR', 'HU',
  'IE', 'IT', 'LT', 'LU', 'LV', 'MT', 'NL', 'PL', 'PT', 'RO', 'SE', 'SI', 'SK',
];

/**
 * Territories with their own ISO code that are part of the EU: the outermost regions of
 * TFEU art. 349 that carry a code (Guadeloupe, French Guiana, Martinique, Mayotte,
 * Reunion, Saint-Martin, Canary Islands), Ceuta and Melilla, and the Aland Islands
 * (TFEU art. 355(4)). The Azores and Madeira have no code of their own and resolve to PT.
 */
export const EU_SPECIAL_TERRITORIES: readonly string[] = [
  'GP', 'GF', 'MQ', 'YT', 'RE', 'MF', 'IC', 'EA', 'AX',
];

/**
 * Territories of member states that are not EU territory. Listed for documentation and
 * tests: a policy excludes only what it names, so these stay outside the EU presets even
 * though country-coder's `isInEuropeanUnion` groups several of them with their mainland.
 */
export const NON_EU_TERRITORIES_OF_MEMBER_STATES: Readonly<Record<string, string>> = {
  GL: 'Greenland (Denmark): OCT, TFEU Annex II',
  FO: 'Faroe Islands (Denmark): TFEU art. 355(5)(a)',
  NC: 'New Caledonia (France): OCT, TFEU Annex II',
  PF: 'French Polynesia (France): OCT, TFEU Annex II',
  TF: 'French Southern and Antarctic Lands (France): OCT, TFEU Annex II',
  WF: 'Wallis and Futuna (France): OCT, TFEU Annex II',
  PM: 'Saint-Pierre-et-Miquelon (France): OCT, TFEU Annex II',
  BL: 'Saint-Barthelemy (France): OCT since 2012, European Council Decision 2010/718/EU',
  AW: 'Aruba (Netherlands): OCT, TFEU Annex II',
  CW: 'Curacao (Netherlands): OCT, TFEU Annex II',
  SX: 'Sint Maarten (Netherlands): OCT, TFEU Annex II',
  BQ: 'Bonaire, Sint Eustatius and Saba (Netherlands): OCT, TFEU Annex II',
};

/** EEA members outside the EU (EEA Agreement); Svalbard and Jan Mayen (SJ) are not covered. */
export const EEA_NON_EU_STATES: readonly string[] = ['IS', 'LI', 'NO'];

/** Territory covered by UK GDPR; the Crown Dependencies and Gibraltar are not. */
export const UK_TERRITORIES: readonly string[] = ['GB'];

export const POLICY_PRESETS = {
  'eea-uk': [...EU_MEMBER_STATES, ...EU_SPECIAL_TERRITORIES, ...EEA_NON_EU_STATES, ...UK_TERRITORIES],
  eea: [...EU_MEMBER_STATES, ...EU_SPECIAL_TERRITORIES, ...EEA_NON_EU_STATES],
  eu: [...EU_MEMBER_STATES, ...EU_SPECIAL_TERRITORIES],
  none: [],
} as const satisfies Record<string, readonly string[]>;

export type PolicyPresetName = keyof typeof POLICY_PRESETS;

export function isPolicyPresetName(name: string): name is PolicyPresetName {
  return Object.hasOwn(POLICY_PRESETS, name);
}
