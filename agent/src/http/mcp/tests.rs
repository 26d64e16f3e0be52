//! MCP over one in-memory connection (the harness's): calls decided, refusals answered
//! with the original id, listings filtered, answers passed on whatever their chunking.
use crate::http::harness::Harness;

fn call(id: &str, tool: &str, arguments: &str) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
    .into_bytes()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const RESULT_EVENT: &[u8] =
    b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n\n";

#[test]
fn an_allowed_call_reaches_the_server_and_its_answer_passes_unchanged() {
    let harness = Harness::new().unwrap();
    for cuts in [&[][..], &[1, 5, 17, 40, 41, 90][..]] {
        let served = harness.serve_mcp(
            &call("7", "echo", r#"{"text":"hi"}"#),
            RESULT_EVENT,
            true,
            cuts,
        );
        let answer = text(&served.answer);
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        assert_eq!(
            answer.matches(&*text(RESULT_EVENT)).count(),
            2,
            "the event passes byte for byte: {answer}"
        );
    }
}

#[test]
fn a_refused_call_gets_a_json_rpc_error_with_its_id_and_the_connection_goes_on() {
    let harness = Harness::new().unwrap();
    let served = harness.serve_mcp(
        &call("\"abc\"", "query", r#"{"table":"users"}"#),
        RESULT_EVENT,
        true,
        &[],
    );
    let answer = text(&served.answer);
    assert_eq!(
        answer.matches("HTTP/1.1 200 OK").count(),
        2,
        "both POSTs answered: {answer}"
    );
    assert!(
        !answer.contains("\"hi\""),
        "the server was not asked: {answer}"
    );
    assert_eq!(answer.matches(r#""id":"abc""#).count(), 2, "{answer}");
    assert!(answer.contains("no-users"), "the policy is named: {answer}");
    assert!(answer.contains("-32001"), "{answer}");
    // Its allowed control: another table.
    let allowed = harness.serve_mcp(
        &call("7", "query", r#"{"table":"orders"}"#),
        RESULT_EVENT,
        true,
        &[],
    );
    assert!(text(&allowed.answer).contains("\"hi\""), "{allowed:?}");
}

#[test]
fn a_listing_loses_the_tools_no_call_of_which_is_permitted() {
    let harness = Harness::new().unwrap();
    let list = br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    let answer = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"drop","inputSchema":{"type":"object"}},{"name":"query","inputSchema":{"type":"object"}}]}}"#;
    let served = harness.serve_mcp(list, answer, false, &[10, 50]);
    let text = text(&served.answer);
    assert!(
        text.contains("\"echo\"") && text.contains("\"query\""),
        "{text}"
    );
    assert!(!text.contains("\"drop\""), "{text}");
    // The same as an SSE event.
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(answer);
    event.extend_from_slice(b"\n\n");
    let served = harness.serve_mcp(list, &event, true, &[3]);
    let text = String::from_utf8_lossy(&served.answer);
    assert!(
        text.contains("\"echo\"") && !text.contains("\"drop\""),
        "{text}"
    );
}

#[test]
fn bodies_that_are_not_json_rpc_get_a_protocol_error() {
    let harness = Harness::new().unwrap();
    for body in [
        &b"{not json"[..],
        b"[]",
        br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
    ] {
        let served = harness.serve_mcp(body, RESULT_EVENT, true, &[]);
        let answer = text(&served.answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("\"jsonrpc\":\"2.0\""), "{answer}");
        assert!(!answer.contains("\"hi\""), "{answer}");
    }
}

#[test]
fn a_stream_cut_mid_event_passes_what_came() {
    let harness = Harness::new().unwrap();
    let cut = &RESULT_EVENT[..RESULT_EVENT.len() - 10];
    let served = harness.serve_mcp(&call("7", "echo", "{}"), cut, true, &[20]);
    let answer = text(&served.answer);
    assert!(answer.contains(&*text(cut)), "{answer}");
}
