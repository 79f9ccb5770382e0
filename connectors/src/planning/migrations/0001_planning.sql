-- The planning database (erp-wms-integration-blueprint §4, Epicor guide §5–§6).
-- inventory and demand_actuals name products by sku without a foreign key: the sink checks
-- every sku against products itself (refusing unknown ones to the DLQ), and a per-row key
-- share lock on products would halve its write rate.
-- Rows written from events carry source_version (the event's ERP time, epoch ms): an upsert
-- never replaces a row with an older version, so replays and out-of-order records cannot
-- move a row backwards.

CREATE TABLE planning.products (
    sku text PRIMARY KEY,
    name text NOT NULL,
    category_name text,
    product_family text,
    lead_time_days integer,
    is_active boolean NOT NULL DEFAULT true,
    source_system text NOT NULL,
    source_version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE planning.inventory (
    sku text NOT NULL,
    location text NOT NULL,
    on_hand_qty numeric(18, 3) NOT NULL,
    allocated_qty numeric(18, 3) NOT NULL DEFAULT 0,
    in_transit_qty numeric(18, 3) NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL,
    source_system text NOT NULL,
    source_version bigint NOT NULL,
    PRIMARY KEY (sku, location)
);

CREATE TABLE planning.demand_actuals (
    sku text NOT NULL,
    period date NOT NULL CHECK (extract(day FROM period) = 1),
    region text NOT NULL DEFAULT 'Global',
    channel text NOT NULL DEFAULT 'All',
    actual_qty numeric(18, 3) NOT NULL,
    source_system text NOT NULL,
    source_version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, period, region, channel)
);

-- Plans made in planning and published back to the ERP once approved.
CREATE TABLE planning.plans (
    plan_id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('demand', 'supply')),
    name text NOT NULL,
    status text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'approved', 'published', 'archived')),
    approved_by text,
    approved_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('approved', 'published')) = (approved_at IS NOT NULL) OR status = 'archived')
);

CREATE TABLE planning.plan_lines (
    plan_id bigint NOT NULL REFERENCES planning.plans (plan_id) ON DELETE CASCADE,
    line_no integer NOT NULL,
    sku text NOT NULL REFERENCES planning.products (sku),
    location text,
    period date NOT NULL,
    quantity numeric(18, 3) NOT NULL,
    PRIMARY KEY (plan_id, line_no)
);

-- One row per successful publication: a plan is published at most once per approval.
CREATE TABLE planning.plan_publications (
    plan_id bigint PRIMARY KEY REFERENCES planning.plans (plan_id),
    publish_key text NOT NULL UNIQUE,
    external_reference_id text NOT NULL,
    correlation_id uuid NOT NULL,
    published_lines integer NOT NULL,
    held_lines integer NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- Every publish attempt, whatever its outcome.
CREATE TABLE planning.publish_audit (
    id bigserial PRIMARY KEY,
    plan_id bigint NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    role text NOT NULL,
    status text NOT NULL CHECK (status IN ('accepted', 'rejected', 'already_published', 'failed')),
    reason text,
    publish_key text,
    external_reference_id text,
    correlation_id uuid NOT NULL,
    published_lines integer NOT NULL DEFAULT 0,
    held_lines jsonb NOT NULL DEFAULT '[]',
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX publish_audit_plan ON planning.publish_audit (plan_id, attempted_at);

-- Sync API requests by idempotency key: a repeat returns the stored first response.
CREATE TABLE planning.sync_requests (
    idempotency_key text PRIMARY KEY,
    endpoint text NOT NULL,
    batch_id text,
    source_system text NOT NULL,
    actor text NOT NULL,
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Input offsets of the planning_pg sink, written in the same transaction as the rows.
CREATE TABLE planning.sink_offsets (
    sink text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);
