//! The page shell every console page shares: the navigation, who is logged in, and the CSRF
//! token htmx sends with every request.

use maud::{DOCTYPE, Markup, html};

use super::assets::href;
use super::auth::Operator;

/// The pages, in navigation order: (path, title).
const PAGES: &[(&str, &str)] = &[
    ("/console/flow", "Flow"),
    ("/console/connectors", "Connectors"),
    ("/console/mapping", "Mapping tester"),
    ("/console/stock", "Stock"),
    ("/console/dead-letters", "Dead letters"),
    ("/console/reconciliation", "Reconciliation"),
    ("/console/history", "Sync history"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config"
                content=r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"responseHandling":[{"code":"204","swap":false},{"code":"[2345]..","swap":true}]}"#;
            title { (title) " · erpstream console" }
            link rel="stylesheet" href=(href("pico.min.css"));
            link rel="stylesheet" href=(href("console.css"));
            script src=(href("htmx.min.js")) defer {}
        }
    }
}

/// A whole page: `current` is its path in the navigation.
pub fn page(title: &str, current: &str, operator: &Operator, content: Markup) -> Markup {
    let csrf = format!(r#"{{"X-CSRF-Token": "{}"}}"#, operator.csrf);
    html! {
        (DOCTYPE)
        html lang="en" data-theme="light" {
            (head(title))
            body hx-headers=(csrf) {
                header.container {
                    nav aria-label="Console" {
                        ul { li { strong { "erpstream" } } }
                        ul {
                            @for (path, name) in PAGES {
                                li {
                                    @if *path == current {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                        ul {
                            li.who { (operator.name) " (" (operator.role.name()) ")" }
                            li {
                                form method="post" action="/console/logout" {
                                    input type="hidden" name="csrf" value=(operator.csrf);
                                    button.secondary.outline type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main.container {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The login page; `problem` says why the last attempt failed.
pub fn login(nonce: &str, next: &str, problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" data-theme="light" {
            (head("Log in"))
            body {
                main.container {
                    article {
                        h1 { "erpstream console" }
                        @if let Some(problem) = problem {
                            p.error-box role="alert" { (problem) }
                        }
                        form method="post" action="/console/login" {
                            input type="hidden" name="nonce" value=(nonce);
                            input type="hidden" name="next" value=(next);
                            label for="token" { "Operator token" }
                            input #token type="password" name="token" required
                                autocomplete="current-password" autofocus;
                            small { "A token of the topology's " code { "console.tokens" } "." }
                            button type="submit" { "Log in" }
                        }
                    }
                }
            }
        }
    }
}
