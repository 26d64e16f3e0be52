//! JSON-RPC 2.0 as MCP carries it: one message or a batch (an array) per HTTP body or
//! SSE event. Messages are kept as parsed JSON values, so that what is forwarded is
//! exactly what was read unless the agent changes it (a filtered `tools/list`, a masked
//! result).
use serde_json::{Map, Value, json};

/// Why bytes are not JSON-RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonRpcError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Shape(&'static str),
    #[error("an empty batch")]
    EmptyBatch,
}

/// The JSON-RPC error code of a call refused by policy (implementation-defined range).
pub const REFUSED: i64 = -32001;
/// The code of a message that is not valid JSON-RPC (the specification's).
pub const INVALID_REQUEST: i64 = -32600;
/// The code of a body that is not JSON.
pub const PARSE_ERROR: i64 = -32700;

/// What one message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Result,
    Error,
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// The whole message as read.
    pub value: Value,
}

impl Message {
    pub fn from_value(value: Value) -> Result<Self, JsonRpcError> {
        let Value::Object(map) = &value else {
            return Err(JsonRpcError::Shape("a message must be an object"));
        };
        if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(JsonRpcError::Shape("\"jsonrpc\" must be \"2.0\""));
        }
        let id = map.get("id");
        if let Some(id) = id
            && !(id.is_string() || id.is_number() || id.is_null())
        {
            return Err(JsonRpcError::Shape("an id must be a string or a number"));
        }
        let kind = match (map.get("method"), id) {
            (Some(Value::String(_)), Some(_)) => Kind::Request,
            (Some(Value::String(_)), None) => Kind::Notification,
            (Some(_), _) => return Err(JsonRpcError::Shape("\"method\" must be a string")),
            (None, Some(_)) if map.contains_key("error") => Kind::Error,
            (None, Some(_)) if map.contains_key("result") => Kind::Result,
            (None, _) => {
                return Err(JsonRpcError::Shape(
                    "neither a request (method) nor a response (id and result or error)",
                ));
            }
        };
        if let Some(params) = map.get("params")
            && !(params.is_object() || params.is_array())
        {
            return Err(JsonRpcError::Shape(
                "\"params\" must be an object or an array",
            ));
        }
        Ok(Self { kind, value })
    }

    pub fn method(&self) -> Option<&str> {
        self.value.get("method").and_then(Value::as_str)
    }

    pub fn id(&self) -> Option<&Value> {
        self.value.get("id")
    }

    /// The id as a key that matches a response to its request (`7` and `"7"` differ).
    pub fn id_key(&self) -> Option<String> {
        self.id().map(Value::to_string)
    }

    pub fn params(&self) -> Option<&Map<String, Value>> {
        self.value.get("params").and_then(Value::as_object)
    }

    pub fn result_mut(&mut self) -> Option<&mut Value> {
        self.value.get_mut("result")
    }

    /// A response's error message, if it is one.
    pub fn error_message(&self) -> Option<String> {
        let error = self.value.get("error")?;
        Some(
            error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned),
        )
    }
}

/// The messages of one body or event.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub messages: Vec<Message>,
    /// Sent as an array (a JSON-RPC batch), even of one.
    pub array: bool,
}

impl Batch {
    pub fn parse(bytes: &[u8]) -> Result<Self, JsonRpcError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| JsonRpcError::Json(e.to_string()))?;
        match value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(JsonRpcError::EmptyBatch);
                }
                let messages = items
                    .into_iter()
                    .map(Message::from_value)
                    .collect::<Result<_, _>>()?;
                Ok(Self {
                    messages,
                    array: true,
                })
            }
            value => Ok(Self {
                messages: vec![Message::from_value(value)?],
                array: false,
            }),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let value = if self.array {
            Value::Array(self.messages.iter().map(|m| m.value.clone()).collect())
        } else {
            self.messages
                .first()
                .map_or(Value::Null, |m| m.value.clone())
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// `value` as JSON text with every object's keys in order: the same value is the same
/// text however its sender ordered it.
pub fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// An error response to the request `id`.
pub fn error_response(id: &Value, code: i64, message: &str, data: Value) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if !data.is_null()
        && let Some(map) = error.as_object_mut()
    {
        map.insert("data".to_owned(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart() {
        let batch = Batch::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}},
                 {"jsonrpc":"2.0","method":"notifications/initialized"},
                 {"jsonrpc":"2.0","id":"a","result":{}},
                 {"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"no"}}]"#,
        )
        .unwrap();
        assert!(batch.array);
        let kinds: Vec<Kind> = batch.messages.iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Request, Kind::Notification, Kind::Result, Kind::Error]
        );
        assert_eq!(batch.messages[0].method(), Some("tools/call"));
        assert_eq!(batch.messages[0].id_key().as_deref(), Some("1"));
        assert_eq!(batch.messages[2].id_key().as_deref(), Some("\"a\""));
        assert_eq!(batch.messages[3].error_message().as_deref(), Some("no"));
        let one = Batch::parse(br#"{"jsonrpc":"2.0","id":1,"result":{"a":1}}"#).unwrap();
        assert!(!one.array);
        assert_eq!(
            Batch::parse(&one.to_bytes()).unwrap().messages[0].value,
            one.messages[0].value
        );
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        for (bytes, want) in [
            (&b"{"[..], "not JSON"),
            (b"[]", "empty batch"),
            (b"3", "object"),
            (br#"{"id":1,"method":"x"}"#, "jsonrpc"),
            (br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#, "id"),
            (br#"{"jsonrpc":"2.0","id":1,"method":7}"#, "method"),
            (br#"{"jsonrpc":"2.0","id":1}"#, "neither"),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
                "params",
            ),
        ] {
            let error = Batch::parse(bytes).unwrap_err().to_string();
            assert!(error.contains(want), "{error} lacks {want}");
        }
    }

    #[test]
    fn canonical_text_does_not_depend_on_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[{"q":1,"p":2}],"x":null}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"x":null,"y":[{"p":2,"q":1}]},"b":1}"#
        );
    }

    #[test]
    fn an_error_response_keeps_the_id() {
        let response = error_response(&json!("abc"), REFUSED, "refused", json!({"p": 1}));
        assert_eq!(response["id"], "abc");
        assert_eq!(response["error"]["code"], REFUSED);
        assert_eq!(response["error"]["data"]["p"], 1);
        let bare = error_response(&json!(3), PARSE_ERROR, "bad", Value::Null);
        assert!(bare["error"].get("data").is_none());
    }
}
