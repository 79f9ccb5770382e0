-- Stock and demand whose product the planning database does not know yet. The planning_pg
-- sink parks them here in the transaction that stores their offsets, writes them once the
-- product is in planning.products, and dead-letters them only after its product_wait.
CREATE TABLE planning.waiting (
    sink text NOT NULL,
    row_kind text NOT NULL CHECK (row_kind IN ('inventory', 'demand')),
    -- The row's key as a JSON array: [sku, location] or [sku, period, region, channel].
    row_key text NOT NULL,
    sku text NOT NULL,
    source_version bigint NOT NULL,
    -- {"key": ..., "values": ...}: what the sink writes once the product is known.
    row jsonb NOT NULL,
    -- The input record (topic, partition, offset, key, value, headers), for its dead letter.
    record jsonb NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, row_kind, row_key)
);
CREATE INDEX waiting_sku ON planning.waiting (sku);

-- Products the planning API accepted and published, before the sink has written them: an
-- inventory or demand sync for them is accepted (the sink waits for the product row).
CREATE TABLE planning.accepted_products (
    sku text PRIMARY KEY,
    accepted_at timestamptz NOT NULL DEFAULT now()
);
