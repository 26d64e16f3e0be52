//! Reading queries and answers, and writing the resolver's own answers (FORMERR,
//! REFUSED, SERVFAIL). The resolver forwards and caches messages as bytes; it parses them
//! only to decide and to record.
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};

/// A query, as the resolver decides it.
#[derive(Debug, Clone)]
pub struct Question {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: String,
    pub qclass: String,
    pub message: Message,
}

/// Why a query cannot be answered normally: the answer's code and what to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswerable {
    pub rcode: ResponseCode,
    pub why: String,
}

/// Parses a query datagram.
pub fn question(bytes: &[u8]) -> Result<Question, Unanswerable> {
    let message = Message::from_vec(bytes).map_err(|error| Unanswerable {
        rcode: ResponseCode::FormErr,
        why: format!("malformed DNS message: {error}"),
    })?;
    if message.message_type() != MessageType::Query {
        return Err(Unanswerable {
            rcode: ResponseCode::FormErr,
            why: "a response, not a query".to_owned(),
        });
    }
    if message.op_code() != OpCode::Query {
        return Err(Unanswerable {
            rcode: ResponseCode::NotImp,
            why: format!("opcode {:?} is not supported", message.op_code()),
        });
    }
    let [query] = message.queries() else {
        return Err(Unanswerable {
            rcode: ResponseCode::FormErr,
            why: format!("{} questions (one is supported)", message.queries().len()),
        });
    };
    Ok(Question {
        id: message.id(),
        name: tollgate_policy::dns::normalize(&query.name().to_ascii()),
        qtype: query.query_type().to_string(),
        qclass: query.query_class().to_string(),
        message: message.clone(),
    })
}

/// A recursive query for the addresses of `name` (A, or AAAA when not `ipv4`), with
/// `id`; None when `name` is not a DNS name.
pub fn address_query(name: &str, ipv4: bool, id: u16) -> Option<Vec<u8>> {
    use hickory_proto::{
        op::Query,
        rr::{Name, RecordType},
    };
    let name = Name::from_ascii(format!("{name}.")).ok()?;
    let qtype = if ipv4 {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    message.to_vec().ok()
}

/// An error answer to `question` (with its question section, as resolvers answer).
pub fn error_answer(question: &Question, rcode: ResponseCode) -> Vec<u8> {
    let mut answer = Message::error_msg(question.id, question.message.op_code(), rcode);
    answer.set_recursion_desired(question.message.recursion_desired());
    answer.set_recursion_available(true);
    for query in question.message.queries() {
        answer.add_query(query.clone());
    }
    answer
        .to_vec()
        .unwrap_or_else(|_| header_only(question.id, rcode))
}

/// FORMERR for bytes that do not parse: the header alone, with the query's id when it
/// has one (a datagram shorter than two bytes gets no answer).
pub fn formerr(bytes: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    Some(header_only(id, ResponseCode::FormErr))
}

fn header_only(id: u16, rcode: ResponseCode) -> Vec<u8> {
    let code = u16::from(rcode) as u8 & 0x0f;
    let mut header = vec![0u8; 12];
    header[..2].copy_from_slice(&id.to_be_bytes());
    header[2] = 0x80; // QR
    header[3] = 0x80 | code; // RA, RCODE
    header
}

/// What an upstream answer says, for the record and the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: String,
    /// `TYPE data`, e.g. `A 10.0.0.5`, `CNAME db.corp.example.`.
    pub records: Vec<String>,
    /// The smallest TTL among the answers (None without answers).
    pub min_ttl: Option<u32>,
    pub truncated: bool,
    /// The addresses among the answers (A and AAAA).
    pub addresses: Vec<std::net::IpAddr>,
}

/// Reads an upstream's answer; None if it is not a well-formed answer to `question`.
pub fn answer(bytes: &[u8], question: &Question) -> Option<Answer> {
    let message = Message::from_vec(bytes).ok()?;
    if message.message_type() != MessageType::Response || message.id() != question.id {
        return None;
    }
    let asked = question.message.queries().first()?;
    if message.queries().first() != Some(asked) && !message.truncated() {
        return None;
    }
    let mut addresses = Vec::new();
    let records = message
        .answers()
        .iter()
        .map(|record| {
            if let Some(ip) = record.data().ip_addr() {
                addresses.push(ip);
            }
            format!("{} {}", record.record_type(), record.data())
        })
        .collect();
    Some(Answer {
        rcode: rcode_name(message.response_code()),
        records,
        min_ttl: message.answers().iter().map(|r| r.ttl()).min(),
        truncated: message.truncated(),
        addresses,
    })
}

pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

/// `bytes` with its id replaced (a cached answer for a new query).
pub fn with_id(bytes: &[u8], id: u16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::Query,
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;

    fn query_bytes(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn queries_are_read_and_answers_written() {
        let q = question(&query_bytes("DB.Corp.Example.", RecordType::A)).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype.as_str()),
            (4242, "db.corp.example", "A")
        );
        let refused = Message::from_vec(&error_answer(&q, ResponseCode::Refused)).unwrap();
        assert_eq!(refused.id(), 4242);
        assert_eq!(refused.response_code(), ResponseCode::Refused);
        assert_eq!(refused.queries(), q.message.queries());

        let mut up = q.message.clone();
        up.set_message_type(MessageType::Response);
        up.add_answer(Record::from_rdata(
            Name::from_ascii("db.corp.example.").unwrap(),
            60,
            RData::A(A::new(10, 0, 0, 5)),
        ));
        let a = answer(&up.to_vec().unwrap(), &q).unwrap();
        assert_eq!(a.rcode, "NOERROR");
        assert_eq!(a.records, ["A 10.0.0.5"]);
        assert_eq!(a.min_ttl, Some(60));
        assert_eq!(
            a.addresses,
            ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
        // Another id is not an answer to this query.
        up.set_id(1);
        assert!(answer(&up.to_vec().unwrap(), &q).is_none());
    }

    #[test]
    fn malformed_input_gets_formerr_and_never_panics() {
        let bytes = query_bytes("x.example.", RecordType::AAAA);
        for n in 0..bytes.len() {
            let cut = &bytes[..n];
            if let Err(e) = question(cut) {
                assert_eq!(e.rcode, ResponseCode::FormErr, "{n}");
            }
        }
        assert!(question(b"\x12\x34garbage").is_err());
        let formerr = formerr(b"\x12\x34garbage").unwrap();
        assert_eq!(&formerr[..4], &[0x12, 0x34, 0x80, 0x81]);
        assert_eq!(super::formerr(b"\x12"), None);
        let q = question(&bytes).unwrap();
        assert_eq!(q.qtype, "AAAA");
        assert_eq!(with_id(&bytes, 7)[..2], [0, 7]);
    }
}
