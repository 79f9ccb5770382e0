//! `erpstream reconcile` at scale: an ERPNext-style Bin export of N sku × location pairs
//! (CSV) against a saved `?detail=true` snapshot of erpstream's state (JSON, the endpoint's
//! format), with planted differences: pairs whose quantity differs, pairs left out of the
//! state (missing) and pairs left out of the export (extra). Every run executes the release
//! binary as an operator would and checks that the report names exactly the planted pairs;
//! per run it records the wall time and the process's peak resident memory (`VmHWM`,
//! sampled every 5 ms until it exits).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args as ClapArgs;
use serde_json::{Value, json};

use crate::report;

/// Options of `erpstream-bench reconcile`.
#[derive(ClapArgs)]
pub struct Args {
    /// Sku × location pairs in the picture and the state.
    #[arg(long, default_value_t = 1_000_000)]
    pairs: usize,
    /// Locations per sku.
    #[arg(long, default_value_t = 4)]
    locations: usize,
    /// Differences of each kind (differing, missing, extra) to plant.
    #[arg(long, default_value_t = 1000)]
    planted: usize,
    /// Repetitions (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The erpstream binary.
    #[arg(long, env = "ERPSTREAM_BIN")]
    binary: PathBuf,
}

/// What kind of difference a pair carries.
#[derive(Clone, Copy, PartialEq)]
enum Plant {
    None,
    Differing,
    Missing,
    Extra,
}

/// The planted pairs, by kind: (sku, location).
#[derive(Default)]
struct Planted {
    differing: BTreeSet<(String, String)>,
    missing: BTreeSet<(String, String)>,
    extra: BTreeSet<(String, String)>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.locations > 0 && args.pairs >= args.locations * 3 * args.planted.max(1));
    let dir =
        std::env::temp_dir().join(format!("erpstream-bench-reconcile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let planted = generate(&args, &dir)?;
    println!(
        "generated {} pairs ({} MiB picture, {} MiB state) in {:.1} s",
        args.pairs,
        std::fs::metadata(dir.join("bins.csv"))?.len() >> 20,
        std::fs::metadata(dir.join("state.json"))?.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let topology = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../topology.yaml");
    let mut runs = Vec::new();
    let (mut seconds, mut peaks) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let report_path = dir.join(format!("report-{run}.json"));
        let started = Instant::now();
        let mut child = std::process::Command::new(&args.binary)
            .arg("reconcile")
            .arg("--against")
            .arg(dir.join("bins.csv"))
            .arg("--state")
            .arg(dir.join("state.json"))
            .arg("--report")
            .arg(&report_path)
            .arg("--topology")
            .arg(&topology)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("run erpstream reconcile")?;
        let pid = child.id();
        let mut peak = 0u64;
        let status = loop {
            peak = peak.max(vm_hwm(pid));
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed().as_secs_f64();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
        }
        ensure!(status.success(), "reconcile failed: {stderr}");
        let exact = check(&report_path, &planted)?;
        println!(
            "run {run}: {elapsed:.2} s, peak {:.0} MiB, planted differences found exactly",
            peak as f64 / (1 << 20) as f64
        );
        seconds.push(elapsed);
        peaks.push(peak as f64 / (1 << 20) as f64);
        runs.push(json!({"seconds": elapsed, "peak_rss_mib": peak as f64 / (1 << 20) as f64, "found": exact}));
    }
    let result = json!({
        "bench": "reconcile",
        "what": "erpstream reconcile (release binary) of an ERPNext-style Bin export (CSV) against a saved ?detail=true snapshot (JSON), with planted differences; wall time and peak RSS of the process",
        "machine": report::machine(),
        "settings": {"pairs": args.pairs, "locations_per_sku": args.locations, "planted_per_kind": args.planted, "runs": args.runs},
        "runs": runs,
        "median_seconds": report::median(&mut seconds),
        "median_peak_rss_mib": report::median(&mut peaks),
        "target_seconds": 10.0,
    });
    let path = report::write("reconcile", &result)?;
    println!(
        "median {:.2} s, peak {:.0} MiB for {} pairs -> {}",
        result["median_seconds"].as_f64().unwrap_or_default(),
        result["median_peak_rss_mib"].as_f64().unwrap_or_default(),
        args.pairs,
        path.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes `bins.csv` and `state.json` into `dir`; returns what was planted.
fn generate(args: &Args, dir: &Path) -> anyhow::Result<Planted> {
    let skus = args.pairs / args.locations;
    let mut csv = std::io::BufWriter::new(std::fs::File::create(dir.join("bins.csv"))?);
    let mut state = std::io::BufWriter::new(std::fs::File::create(dir.join("state.json"))?);
    writeln!(csv, "Item Code,Warehouse,Actual Qty")?;
    state.write_all(b"[")?;
    let mut planted = Planted::default();
    // Spread the planted pairs evenly: every `stride`-th pair, the kinds taking turns.
    let stride = args.pairs / (args.planted * 3).max(1);
    for s in 0..skus {
        let sku = format!("SKU-{s:07}");
        if s > 0 {
            state.write_all(b",")?;
        }
        write!(
            state,
            r#"{{"sku":"{sku}","qty":0,"partition":{},"locations":["#,
            s % 3
        )?;
        let mut first = true;
        for l in 0..args.locations {
            let pair = s * args.locations + l;
            let location = format!("WH-{l:02}");
            let plant = if args.planted > 0
                && pair.is_multiple_of(stride)
                && pair / stride < args.planted * 3
            {
                match (pair / stride) % 3 {
                    0 => Plant::Differing,
                    1 => Plant::Missing,
                    _ => Plant::Extra,
                }
            } else {
                Plant::None
            };
            let quantity = (pair * 7919) % 100_000;
            let key = (sku.clone(), location.clone());
            match plant {
                Plant::Differing => planted.differing.insert(key),
                Plant::Missing => planted.missing.insert(key),
                Plant::Extra => planted.extra.insert(key),
                Plant::None => false,
            };
            // The ERP writes 12.5 where erpstream holds 12.500: equal, not a difference.
            if plant != Plant::Extra {
                writeln!(csv, "{sku},{location},{quantity}.5")?;
            }
            if plant != Plant::Missing {
                let on_hand = if plant == Plant::Differing {
                    format!("{}.500", quantity + 1)
                } else {
                    format!("{quantity}.500")
                };
                if !first {
                    state.write_all(b",")?;
                }
                first = false;
                write!(
                    state,
                    r#"{{"location_code":"{location}","on_hand":{on_hand},"reserved":0,"safety_stock":0,"available":{on_hand},"version":3,"erp_time":1795759360415,"erp_offset":{pair}}}"#
                )?;
            }
        }
        state.write_all(b"]}")?;
    }
    state.write_all(b"]")?;
    csv.flush()?;
    state.flush()?;
    Ok(planted)
}

/// Checks that the report names exactly the planted pairs.
fn check(path: &Path, planted: &Planted) -> anyhow::Result<bool> {
    let report: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let found = |kind: &str| -> BTreeSet<(String, String)> {
        report["state"][kind]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    d["sku"].as_str().unwrap_or_default().to_string(),
                    d["location"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    for (kind, expected) in [
        ("differing", &planted.differing),
        ("missing", &planted.missing),
        ("extra", &planted.extra),
    ] {
        let got = found(kind);
        ensure!(
            &got == expected,
            "{kind}: found {} pairs, planted {}; first unexpected {:?}, first not found {:?}",
            got.len(),
            expected.len(),
            got.difference(expected).next(),
            expected.difference(&got).next()
        );
    }
    Ok(true)
}

/// Peak resident memory of a running process (0 once it is gone).
fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
