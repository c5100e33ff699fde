-- Catalog of ingestion runs: one row per run, per kept sample, per rejected input row
-- and per published shard. Runs on PostgreSQL 15 and on PGlite (PostgreSQL 18).

create table runs (
  id text primary key,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  source text not null,
  output text not null,
  policy text not null,
  options jsonb not null,
  input_rows bigint,
  ok bigint,
  rejected bigint,
  reasons jsonb
);

create table shards (
  run_id text not null references runs (id) on delete cascade,
  name text not null,
  samples integer not null,
  bytes bigint not null,
  md5 text not null,
  first_key text not null,
  last_key text not null,
  created_at timestamptz not null default now(),
  primary key (run_id, name)
);

create table samples (
  run_id text not null references runs (id) on delete cascade,
  key text not null,
  row_index bigint not null,
  url text not null,
  shard text not null,
  sha256 text not null,
  phash text not null,
  territory text,
  location_source text,
  width integer not null,
  height integer not null,
  original_width integer not null,
  original_height integer not null,
  source_format text not null,
  caption text,
  primary key (run_id, key),
  unique (run_id, row_index)
);

create index samples_sha256 on samples (sha256);
create index samples_territory on samples (territory);

create table rejections (
  run_id text not null references runs (id) on delete cascade,
  row_index bigint not null,
  url text,
  reason text not null,
  detail text,
  territory text,
  duplicate_of text,
  primary key (run_id, row_index)
);

create index rejections_reason on rejections (run_id, reason);
