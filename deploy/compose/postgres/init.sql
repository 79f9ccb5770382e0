-- Databases of the default topology (run once, on the first start of the volume).
CREATE DATABASE erpstream;
CREATE DATABASE erp;
CREATE DATABASE planning;
\connect erp
-- The ERP table the pg_cdc source captures (an ERPNext-like Bin table).
CREATE TABLE public.bin (
  item_code text NOT NULL, warehouse text NOT NULL,
  actual_qty numeric(18,3) NOT NULL DEFAULT 0, reserved_qty numeric(18,3) NOT NULL DEFAULT 0,
  modified timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (item_code, warehouse));
