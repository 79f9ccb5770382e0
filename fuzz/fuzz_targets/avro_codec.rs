//! Avro records in the Confluent wire format through the codec, as every consumer of a
//! topic reads them: under this build's own schema ids (the direct reader) and under
//! foreign ids — other producers' versions of each contract, fetched from the registry and
//! resolved into the event type — and into JSON (`erpstream tail`, `dlq show`).
//!
//! The registry is a minimal in-process one (GET `/schemas/ids/{id}`, POST
//! `/subjects/{subject}/versions`), so the codec's own lookups run unchanged. Input: one
//! byte picking the contract, one picking the writer schema, then the Avro datum.
#![no_main]

use std::sync::LazyLock;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use erpstream_schemas::{
    CatalogUpdate, Codec, DemandActual, Event, EventKind, InventoryAdjustment, InventoryAvailable,
    InventoryChange, Reservation, SalesOrder,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// Writer schemas other than this build's, per contract: the same fields in reverse order,
/// one optional field more, the last field missing, every field a string.
const VARIANTS: u32 = 4;

fn kind_index(kind: EventKind) -> u32 {
    EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("kind") as u32
}

/// This build's id of `kind` (registration answers it).
fn own_id(kind: EventKind) -> u32 {
    1 + kind_index(kind)
}

fn foreign_id(kind: EventKind, variant: u32) -> u32 {
    100 + kind_index(kind) * 10 + variant
}

fn schema_of(id: u32) -> Option<String> {
    if (1..=EventKind::ALL.len() as u32).contains(&id) {
        return Some(EventKind::ALL[id as usize - 1].schema_text().to_string());
    }
    let (kind, variant) = (id.checked_sub(100)? / 10, id % 10);
    let kind = *EventKind::ALL.get(kind as usize)?;
    if variant >= VARIANTS {
        return None;
    }
    let mut schema: Value = serde_json::from_str(kind.schema_text()).expect("bundled schema");
    let fields = schema["fields"].as_array_mut().expect("record fields");
    match variant {
        0 => fields.reverse(),
        1 => fields.push(json!({"name": "extra", "type": ["null", "string"], "default": null})),
        2 => {
            fields.pop();
        }
        _ => {
            for field in fields.iter_mut() {
                field["type"] = json!("string");
            }
        }
    }
    Some(schema.to_string())
}

async fn schema(Path(id): Path<u32>) -> Result<Json<Value>, StatusCode> {
    let schema = schema_of(id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(json!({ "schema": schema })))
}

async fn register(Path(subject): Path<String>) -> Result<Json<Value>, StatusCode> {
    let topic = subject
        .strip_suffix("-value")
        .ok_or(StatusCode::NOT_FOUND)?;
    let kind = EventKind::from_topic(topic).ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(json!({ "id": own_id(kind) })))
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
});

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    RUNTIME.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema))
            .route("/subjects/{subject}/versions", post(register));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let codec = Codec::new(&url).expect("codec");
        for kind in EventKind::ALL {
            codec.register(kind.topic(), kind).await.expect("register");
        }
        codec
    })
});

async fn decode<E: Event>(codec: &Codec, payload: &[u8]) {
    let _ = codec.decode::<E>(payload).await;
}

fuzz_target!(|input: &[u8]| {
    let [kind, writer, datum @ ..] = input else {
        return;
    };
    let kind = EventKind::ALL[usize::from(*kind) % EventKind::ALL.len()];
    let id = match u32::from(*writer) % (VARIANTS + 2) {
        0 => own_id(kind),
        v if v <= VARIANTS => foreign_id(kind, v - 1),
        _ => 9_999,
    };
    let mut payload = vec![0];
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(datum);
    let codec = &*CODEC;
    RUNTIME.block_on(async {
        match kind {
            EventKind::CatalogUpdate => decode::<CatalogUpdate>(codec, &payload).await,
            EventKind::InventoryChange => decode::<InventoryChange>(codec, &payload).await,
            EventKind::SalesOrder => decode::<SalesOrder>(codec, &payload).await,
            EventKind::InventoryAvailable => decode::<InventoryAvailable>(codec, &payload).await,
            EventKind::InventoryAdjustment => decode::<InventoryAdjustment>(codec, &payload).await,
            EventKind::Reservation => decode::<Reservation>(codec, &payload).await,
            EventKind::DemandActual => decode::<DemandActual>(codec, &payload).await,
        }
        let _ = codec.decode_json(&payload).await;
    });
});
