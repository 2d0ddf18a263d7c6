//! The answers both APIs give, in the real VMMs' shapes: 204 with no body,
//! JSON bodies, and each VMM's error body (CH's error chain, FC's
//! `fault_message`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `body`, already JSON, with `status`.
pub fn json_body(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

pub fn ok_json(value: Value) -> Response {
    json_body(StatusCode::OK, value.to_string())
}

/// Cloud Hypervisor's error body: the error chain as a JSON array.
pub fn ch_error(status: StatusCode, chain: &[&str]) -> Response {
    let mut messages = vec!["Error from API"];
    messages.extend_from_slice(chain);
    json_body(status, serde_json::to_string(&messages).unwrap())
}

pub fn fc_fault(status: StatusCode, message: &str) -> Response {
    json_body(status, json!({"fault_message": message}).to_string())
}
