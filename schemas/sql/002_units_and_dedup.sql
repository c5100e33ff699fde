-- Work units of distributed runs, and the dedup index that workers share.

create table units (
  run_id text not null references runs (id) on delete cascade,
  unit integer not null,
  path text not null,
  first_row bigint not null,
  rows integer not null,
  status text not null default 'pending' check (status in ('pending', 'running', 'done')),
  worker text,
  attempts integer not null default 0,
  started_at timestamptz,
  finished_at timestamptz,
  ok integer,
  rejected integer,
  reasons jsonb,
  primary key (run_id, unit)
);

create index units_status on units (run_id, status);

-- Exact duplicates: one kept key per pixel hash within a scope (a run).
create table dedup_exact (
  scope text not null,
  sha256 text not null,
  key text not null,
  primary key (scope, sha256)
);

-- Near duplicates by multi-index hashing: the 64-bit perceptual hash split into chunks of
-- 22, 21 and 21 bits, each indexed. Chunks this wide keep each index bucket to a few rows
-- at tens of millions of hashes, so a lookup reads a few hundred short index ranges.
create table dedup_near (
  scope text not null,
  key text not null,
  -- The 64-bit hash as a signed bigint, so the database computes Hamming distances itself.
  phash bigint not null,
  c0 integer not null,
  c1 integer not null,
  c2 integer not null,
  primary key (scope, key)
);

create index dedup_near_c0 on dedup_near (scope, c0);
create index dedup_near_c1 on dedup_near (scope, c1);
create index dedup_near_c2 on dedup_near (scope, c2);
