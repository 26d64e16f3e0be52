//! Masking of JSON answers from HTTP targets that configure `masking` (`masking = {
//! results = "rules" }` or `"detect"`): the body is read whole, masked as PostgreSQL
//! results are (rules by key, detectors in string values where `detect`), and sent with
//! its new length. Other answers, and every answer of a target without `masking`, pass
//! as they stream.
use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use super::session::Body;
use crate::postgres::mask::{MaskingConfig, ResultsMasking};

/// The largest JSON answer masked; a larger one is refused (502), never passed unmasked.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Whether an answer's body is JSON.
pub(super) fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // (No allocation: every answer of a followed connection asks.)
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence
                    .get(essence.len().saturating_sub(5)..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"))
        })
}

/// `response`, its JSON body masked for `target`.
pub(super) async fn mask(
    response: Response<Incoming>,
    masking: &MaskingConfig,
    target: &str,
    mode: ResultsMasking,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let why = format!("tollgate: the answer could not be masked: {error}");
            let mut refused = Response::new(full(Bytes::from(
                serde_json::json!({ "error": "unmasked", "message": why }).to_string(),
            )));
            *refused.status_mut() = http::StatusCode::BAD_GATEWAY;
            refused.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return refused;
        }
    };
    let detect = mode == ResultsMasking::Detect;
    let out = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(mut value) => {
            if masking.mask_json(&mut value, target, detect) > 0 {
                Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
            } else {
                bytes
            }
        }
        // Not JSON after all: as it came.
        Err(_) => bytes,
    };
    whole(&mut parts.headers, out.len());
    Response::from_parts(parts, full(out))
}

/// The headers of an answer whose body is now whole: its length is said, not its
/// chunking.
pub(super) fn whole(headers: &mut http::HeaderMap, len: usize) {
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(len as u64),
    );
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
