//! The local schema registry behaves like Confluent's for the calls clients make.

use erpstream_e2e::{Stack, unique};
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn schema(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Probe","namespace":"test","fields":[{fields}]}}"#)
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .header("content-type", CONTENT_TYPE);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("registry reachable");
    let status = response.status().as_u16();
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some(CONTENT_TYPE)
    );
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_speaks_the_confluent_rest_subset() {
    let base = Stack::from_env().registry;
    let subject = format!("{}-value", unique("probe."));
    let v1 = schema(r#"{"name":"a","type":"string"}"#);
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": v1})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_i64().expect("id");

    // The same schema again (different whitespace) returns the same id.
    let (_, again) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": v1.replace(',', ", ")})),
    )
    .await;
    assert_eq!(again["id"], id);

    // BACKWARD by default: a new field without a default is refused with 409.
    let breaking = schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": breaking})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_i64()),
        (409, Some(409)),
        "{body}"
    );
    let (_, check) = call(
        reqwest::Method::POST,
        format!("{base}/compatibility/subjects/{subject}/versions/latest"),
        Some(json!({"schema": breaking})),
    )
    .await;
    assert_eq!(check["is_compatible"], false);

    let compatible =
        schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": compatible})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, versions) = call(
        reqwest::Method::GET,
        format!("{base}/subjects/{subject}/versions"),
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2]));
    let (_, latest) = call(
        reqwest::Method::GET,
        format!("{base}/subjects/{subject}/versions/latest"),
        None,
    )
    .await;
    assert_eq!(
        (latest["subject"].as_str(), latest["version"].as_i64()),
        (Some(subject.as_str()), Some(2))
    );
    let (_, by_id) = call(
        reqwest::Method::GET,
        format!("{base}/schemas/ids/{id}"),
        None,
    )
    .await;
    assert_eq!(by_id["schema"], v1);
    let (_, subjects) = call(reqwest::Method::GET, format!("{base}/subjects"), None).await;
    assert!(
        subjects
            .as_array()
            .is_some_and(|s| s.contains(&json!(subject)))
    );

    // NONE per subject lets the breaking change in; the global level is untouched.
    let (status, _) = call(
        reqwest::Method::PUT,
        format!("{base}/config/{subject}"),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": breaking})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, global) = call(reqwest::Method::GET, format!("{base}/config"), None).await;
    assert_eq!(global["compatibilityLevel"], "BACKWARD");

    // Confluent's error codes.
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{base}/subjects/{}/versions", unique("missing.")),
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40401)));
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{base}/subjects/{subject}/versions/99"),
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40402)));
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{base}/schemas/ids/2147483000"),
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40403)));
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{base}/subjects/{subject}/versions"),
        Some(json!({"schema": "{\"type\": \"recor\"}"})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_i64()),
        (422, Some(42201)),
        "{body}"
    );
    let (status, body) = call(
        reqwest::Method::GET,
        format!("{base}/config/{}", unique("unset.")),
        None,
    )
    .await;
    assert_eq!((status, body["error_code"].as_i64()), (404, Some(40408)));
}
