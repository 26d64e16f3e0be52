//! Checks an API answer against the console's own OpenAPI document: the path and its
//! GET must be described, and the answer must match the 200 response's schema (types,
//! required properties, items, enums; `$ref`s followed).
use serde_json::Value;

fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.trim_start_matches('#');
            let target = document
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {reference}"));
            resolve(document, target)
        }
        None => schema,
    }
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn validate(document: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(document, schema);
    if let Some(options) = schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        let fits = options.iter().any(|option| {
            let mut inner = Vec::new();
            validate(document, option, value, at, &mut inner);
            inner.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: matches none of the alternatives"));
        }
        return;
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
        errors.push(format!("{at}: {value} is not {types:?}"));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {options:?}"));
    }
    if let Value::Object(map) = value {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(required) {
                errors.push(format!("{at}: missing required `{required}`"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, sub) in properties {
                if let Some(v) = map.get(key) {
                    validate(document, sub, v, &format!("{at}.{key}"), errors);
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate().take(50) {
            validate(document, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Panics with every mismatch when `answer` does not fit `path`'s GET 200 schema.
pub fn check(document: &Value, path: &str, answer: &Value) {
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "not an OpenAPI 3 document"
    );
    let schema = document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]
        .clone();
    assert!(
        !schema.is_null(),
        "the OpenAPI document does not describe GET {path}"
    );
    let mut errors = Vec::new();
    validate(document, &schema, answer, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "GET {path} does not match its schema:\n{}",
        errors.join("\n")
    );
}
