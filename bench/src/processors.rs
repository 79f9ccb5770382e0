//! The processors benchmark: the `dedupe` → `inventory` chain in process, no broker, on one
//! core, with the Avro work a running chain does — decoding each Confluent wire-format input
//! and encoding each emitted `inventory.available` — through apache-avro, the library the
//! codec uses. Reported separately: the whole path, decode only, processing only (which
//! includes the changelog values the inventory processor writes) and encode only, so the
//! profile says where the time goes.
//!
//! Two Avro paths are measured: `direct` — what the codec does for records under this
//! build's own schema ids (apache-avro's schema-aware serde serializer and deserializer, no
//! `Value` tree) — and `value` — its path for records from other producers or schema
//! versions (serde → `Value` tree → resolve against the schema → bytes, and back). Before timing, the direct
//! path is checked to produce the same bytes and the same events as the value path.

use std::time::Instant;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use erpstream_connectors::kafka::RawRecord;
use erpstream_pipeline::processors::dedupe::{Dedupe, DedupeConfig};
use erpstream_pipeline::processors::inventory::{Inventory, InventoryConfig};
use erpstream_pipeline::processors::{Decoded, Effects, Emit, Processor, Record};
use erpstream_schemas::{EventKind, InventoryAvailable, InventoryChange};
use rust_decimal::Decimal;
use serde_json::json;

use crate::report;

/// Arguments of `erpstream-bench processors`.
#[derive(clap::Args)]
pub struct Args {
    /// Input records per run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Distinct skus (× 3 locations).
    #[arg(long, default_value_t = 100_000)]
    skus: usize,
    /// Share of inputs that repeat an earlier idempotency key (dropped by dedupe).
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Measured runs per codec path (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// How records are turned into Avro and back.
#[derive(Clone, Copy, Debug)]
enum Path {
    /// serde → `Value` → bytes (the codec's path for foreign schema ids).
    Value,
    /// Schema-aware serde straight to bytes (the codec's path for its own schema ids).
    Direct,
}

const PARTITIONS: i32 = 3;

/// A contract's schema with its writer and reader, built once (as the codec builds them).
struct Contract {
    schema: &'static Schema,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

impl Contract {
    fn new(kind: EventKind) -> anyhow::Result<Self> {
        let schema = erpstream_schemas::codec::bundled_schema(kind)?;
        Ok(Self {
            schema,
            writer: GenericDatumWriter::builder(schema).build()?,
            reader: GenericDatumReader::builder(schema).build()?,
        })
    }

    fn encode<T: serde::Serialize>(&self, path: Path, event: &T) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&[0u8, 0, 0, 0, 1]);
        match path {
            Path::Value => {
                let value = apache_avro::to_value(event)?.resolve(self.schema)?;
                self.writer.write_value(&mut out, value)?;
            }
            Path::Direct => {
                self.writer.write_ser(&mut out, event)?;
            }
        }
        Ok(out)
    }

    fn decode(&self, path: Path, payload: &[u8]) -> anyhow::Result<InventoryChange> {
        Ok(match path {
            Path::Value => apache_avro::from_value(&self.reader.read_value(&mut &payload[5..])?)?,
            Path::Direct => self.reader.read_deser(&mut &payload[5..])?,
        })
    }
}

/// The direct path must give the value path's bytes and events.
fn check_paths_agree(inputs: &[(i32, Vec<u8>)], input: &Contract) -> anyhow::Result<()> {
    for (_, payload) in inputs.iter().take(1_000) {
        let by_value = input.decode(Path::Value, payload)?;
        let direct = input.decode(Path::Direct, payload)?;
        anyhow::ensure!(by_value == direct, "direct decode differs: {direct:?}");
        anyhow::ensure!(
            input.encode(Path::Direct, &direct)? == *payload,
            "direct encode differs for {direct:?}"
        );
    }
    Ok(())
}

fn inputs(args: &Args, input: &Contract) -> anyhow::Result<Vec<(i32, Vec<u8>)>> {
    let path = Path::Value;
    let mut out = Vec::with_capacity(args.events);
    let every = if args.duplicates > 0.0 {
        (1.0 / args.duplicates) as usize
    } else {
        usize::MAX
    };
    for i in 0..args.events {
        let n = if i > 0 && i % every == 0 { i - 1 } else { i };
        let sku = format!("SKU-{:07}", n % args.skus);
        let event = InventoryChange {
            event_id: format!("00000000-0000-7000-8000-{n:012}"),
            idempotency_key: format!("erp:{n}"),
            source_system: "ERP".into(),
            source: "erp".into(),
            occurred_at: 1_764_000_000_000 + n as i64,
            ingested_at: 1_764_000_000_000 + n as i64,
            location_code: format!("WH-{:02}", (n / args.skus) % 3),
            new_quantity: Some(Decimal::from((n * 7) % 1000)),
            allocated_qty: None,
            in_transit_qty: None,
            quantity_change: None,
            change_reason: Some("POS_SALE".into()),
            reference_id: None,
            sku: sku.clone(),
        };
        let partition = (sku.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
        out.push((partition, input.encode(path, &event)?));
    }
    Ok(out)
}

struct Timings {
    decode: f64,
    process: f64,
    encode: f64,
    total: f64,
    emitted: usize,
}

fn one_run(
    path: Path,
    inputs: &[(i32, Vec<u8>)],
    input: &Contract,
    output: &Contract,
) -> anyhow::Result<Timings> {
    let dedupe_config: DedupeConfig =
        serde_json::from_value(json!({"inputs": ["inventory.change"]}))?;
    let inventory_config: InventoryConfig =
        serde_json::from_value(json!({"inputs": ["dedupe"], "output": "inventory.available"}))?;
    let mut chain: Vec<Box<dyn Processor>> = vec![
        Box::new(Dedupe::new("dedupe", &dedupe_config, None)),
        Box::new(Inventory::new(
            "inventory",
            &inventory_config,
            "inventory.available".into(),
        )),
    ];
    for partition in 0..PARTITIONS {
        for processor in &mut chain {
            processor.restore(partition, Default::default());
        }
    }
    let (mut decode_s, mut process_s, mut encode_s) = (0.0, 0.0, 0.0);
    let mut emitted = 0;
    let started = Instant::now();
    for (offset, batch) in inputs.chunks(1_000).enumerate() {
        let mut effects = Effects::default();
        for (i, (partition, payload)) in batch.iter().enumerate() {
            let t0 = Instant::now();
            let event = input.decode(path, payload)?;
            let t1 = Instant::now();
            let record = Record {
                topic: "inventory.change".into(),
                partition: *partition,
                offset: (offset * 1_000 + i) as i64,
                raw: RawRecord {
                    topic: "inventory.change".into(),
                    key: Some(event.sku.clone().into_bytes()),
                    payload: Some(payload.clone()),
                    headers: Vec::new(),
                    partition: None,
                },
                trace: None,
                event: Decoded::InventoryChange(event),
            };
            for (index, processor) in chain.iter_mut().enumerate() {
                if !processor.process(index, &record, &mut effects) {
                    break;
                }
            }
            decode_s += (t1 - t0).as_secs_f64();
            process_s += t1.elapsed().as_secs_f64();
        }
        let t2 = Instant::now();
        for emit in effects.emit {
            if let Emit::Available(_, available, _) = emit {
                let bytes = output.encode::<InventoryAvailable>(path, &available)?;
                std::hint::black_box(bytes);
                emitted += 1;
            }
        }
        encode_s += t2.elapsed().as_secs_f64();
    }
    Ok(Timings {
        decode: decode_s,
        process: process_s,
        encode: encode_s,
        total: started.elapsed().as_secs_f64(),
        emitted,
    })
}

/// Runs the benchmark and writes `bench/results/processors.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let input = Contract::new(EventKind::InventoryChange)?;
    let output = Contract::new(EventKind::InventoryAvailable)?;
    eprintln!("[processors] encoding {} inputs", args.events);
    let inputs = inputs(&args, &input)?;
    check_paths_agree(&inputs, &input)?;
    let mut by_path = serde_json::Map::new();
    for path in [Path::Value, Path::Direct] {
        let (mut totals, mut decodes, mut processes, mut encodes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut emitted = 0;
        for run in 0..args.runs {
            let t = one_run(path, &inputs, &input, &output)?;
            let rate = args.events as f64 / t.total;
            eprintln!(
                "[processors] {path:?} run {}: {:.0} events/s (decode {:.2}s, process {:.2}s, encode {:.2}s, {} emitted)",
                run + 1,
                rate,
                t.decode,
                t.process,
                t.encode,
                t.emitted
            );
            totals.push(rate);
            decodes.push(args.events as f64 / t.decode);
            processes.push(args.events as f64 / t.process);
            encodes.push(t.emitted as f64 / t.encode.max(1e-9));
            emitted = t.emitted;
        }
        by_path.insert(
            format!("{path:?}").to_lowercase(),
            json!({
                "median_events_per_second_per_core": report::median(&mut totals),
                "median_decode_per_second": report::median(&mut decodes),
                "median_process_per_second": report::median(&mut processes),
                "median_encode_per_second": report::median(&mut encodes),
                "emitted_per_run": emitted,
            }),
        );
    }
    let result = json!({
        "benchmark": "processors",
        "machine": report::machine(),
        "settings": {
            "events": args.events, "skus": args.skus, "locations": 3, "partitions": PARTITIONS,
            "duplicate_share": args.duplicates, "runs": args.runs, "threads": 1,
            "codec": "apache-avro 0.22: direct = schema-aware serde (the codec, own schema ids); value = serde → Value → resolve → bytes (the codec, foreign schema ids)",
        },
        "results": by_path,
    });
    let path = report::write("processors", &result)?;
    println!("{}", serde_json::to_string_pretty(&result["results"])?);
    eprintln!("[processors] written to {}", path.display());
    Ok(())
}
