//! `GET /v1/openapi.json`: the control API as an OpenAPI 3.1 document.

pub const DOCUMENT: &str = include_str!("openapi.json");
