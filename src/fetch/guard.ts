import dns, { type LookupAddress, type LookupOptions } from 'node:dns';
import net from 'node:net';
import ipaddr from 'ipaddr.js';

/**
 * Cloud metadata and platform endpoints. Most lie in ranges rejected anyway (link-local,
 * carrier-grade NAT, unique-local), but Azure's wire server is a public unicast address.
 */
const METADATA_ADDRESSES = new Set(['169.254.169.254', '168.63.129.16', '100.100.100.200', '192.0.0.192', 'fd00:ec2::254']);

/** Thrown from the guarded lookup; the fetcher maps it to the private_address reason. */
export class PrivateAddressError extends Error {
  readonly code = 'EGEOSHARD_PRIVATE_ADDRESS';

  constructor(readonly hostname: string, readonly address: string, readonly range: string) {
    super(`${hostname} resolves to ${address} (${range}), which is refused without --allow-private-network`);
    this.name = 'PrivateAddressError';
  }
}

/**
 * Returns the ipaddr.js range name of an address, or null when it is a public unicast
 * address. IPv4-mapped IPv6 addresses are judged as IPv4. IPv6 transition prefixes
 * (6to4, NAT64, Teredo) are refused because they can embed private IPv4 addresses.
 */
export function refusedRange(address: string): string | null {
  if (METADATA_ADDRESSES.has(address)) return 'metadata';
  let parsed: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    parsed = ipaddr.parse(address);
  } catch {
    return 'invalid';
  }
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) {
    parsed = (parsed as ipaddr.IPv6).toIPv4Address();
    if (METADATA_ADDRESSES.has(parsed.toString())) return 'metadata';
  }
  const range = parsed.range();
  return range === 'unicast' ? null : range;
}

/** Checks a literal IP host, which connects without any lookup. */
export function assertPublicLiteral(hostname: string): void {
  const bare = hostname.replace(/^\[|\]$/g, '');
  if (!net.isIP(bare)) return;
  const range = refusedRange(bare);
  if (range) throw new PrivateAddressError(hostname, bare, range);
}

export type LookupFunction = (
  hostname: string,
  options: LookupOptions,
  callback: (error: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void,
) => void;

type Resolver = (
  hostname: string,
  options: LookupOptions & { all: true },
  callback: (error: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void,
) => void;

/**
 * Wraps a resolver so that every connection, redirects included, is checked against the
 * addresses it is about to use. A host with any rejected address is rejected whole,
 * because mixing public and private addresses is how DNS rebinding gets past a check.
 */
export function createGuardedLookup({
  allowPrivateNetwork,
  resolver = dns.lookup as unknown as Resolver,
}: {
  allowPrivateNetwork: boolean;
  resolver?: Resolver;
}): LookupFunction {
  return (hostname, options, callback) => {
    resolver(hostname, { ...options, all: true }, (error, addresses) => {
      if (error) return callback(error, []);
      if (addresses.length === 0) return callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' }), []);

      if (!allowPrivateNetwork) {
        for (const { address } of addresses) {
          const range = refusedRange(address);
          if (range) return callback(new PrivateAddressError(hostname, address, range) as unknown as NodeJS.ErrnoException, []);
        }
      }

      if (options.all) return callback(null, addresses);
      const first = addresses[0]!;
      return callback(null, first.address, first.family);
    });
  };
}
