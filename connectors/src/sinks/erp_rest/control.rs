//! The operators' controls of an `erp_rest` sink: its target and a connection test with
//! the sink's own client and credentials that writes nothing — ERPNext's
//! `frappe.auth.get_logged_user` (which user the token is), and for the `generic` preset a
//! `HEAD` of the base URL with the bearer token (a 401 or 403 means the token is refused).

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::config::Preset;
use crate::component::{Control, Outcome, Standing};
use crate::retry::error_chain;

/// The controls, sharing the running sink's client.
pub struct ErpRestControl {
    pub(super) client: reqwest::Client,
    pub(super) base: reqwest::Url,
    pub(super) token: Option<SecretString>,
    pub(super) preset: Preset,
}

impl Control for ErpRestControl {
    fn standing(&self) -> Standing {
        Standing {
            target: Some(crate::postgres::redacted(self.base.as_str())),
            ..Standing::default()
        }
    }

    fn test(&self) -> BoxFuture<'static, Outcome> {
        let (client, base, token, preset) = (
            self.client.clone(),
            self.base.clone(),
            self.token.clone(),
            self.preset,
        );
        Box::pin(async move {
            let token = token.as_ref().map(|t| t.expose_secret().to_string());
            let request = match preset {
                Preset::Erpnext => match base.join("api/method/frappe.auth.get_logged_user") {
                    Ok(url) => client.get(url).header(
                        "authorization",
                        format!("token {}", token.unwrap_or_default()),
                    ),
                    Err(err) => return Outcome::failed(format!("url: {err}")),
                },
                Preset::Generic => {
                    let request = client.head(base.clone());
                    match token {
                        Some(token) => request.bearer_auth(token),
                        None => request,
                    }
                }
            };
            let peer = match preset {
                Preset::Erpnext => "ERPNext",
                Preset::Generic => "the ERP",
            };
            match request.send().await {
                Err(err) => Outcome::failed(format!("{peer}: {}", error_chain(&err))),
                Ok(answer) if matches!(answer.status().as_u16(), 401 | 403) => Outcome::failed(
                    format!("{peer} refused the credentials ({})", answer.status()),
                ),
                Ok(answer) if answer.status().is_server_error() => {
                    Outcome::failed(format!("{peer} answered {}", answer.status()))
                }
                Ok(answer) if preset == Preset::Erpnext => {
                    let status = answer.status();
                    let user = answer
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_string));
                    match (status.is_success(), user) {
                        (true, Some(user)) => {
                            Outcome::ok(format!("ERPNext accepted the credentials as {user}"))
                        }
                        _ => Outcome::failed(format!("ERPNext answered {status}")),
                    }
                }
                Ok(answer) => Outcome::ok(format!(
                    "the ERP answers at {} ({}); the token was not refused",
                    crate::postgres::redacted(base.as_str()),
                    answer.status()
                )),
            }
        })
    }
}
