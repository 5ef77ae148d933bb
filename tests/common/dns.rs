//! A DNS server on 127.0.0.1 for tests. It answers A queries over UDP for the names a test
//! gives it, with addresses the test can change at any time and a TTL of 0, so every lookup
//! sees the current answer. A name can also take turns between several addresses, one per
//! query. Other names get NXDOMAIN, and other record types of a known name get an empty
//! answer. It speaks only as much of RFC 1035 as a stub resolver needs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;

const FLAG_RESPONSE: u16 = 0x8000;
const FLAG_AUTHORITATIVE: u16 = 0x0400;
const FLAG_RECURSION_DESIRED: u16 = 0x0100;
const FLAG_RECURSION_AVAILABLE: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;

const RCODE_FORMAT_ERROR: u16 = 1;
const RCODE_NAME_ERROR: u16 = 3;
const RCODE_NOT_IMPLEMENTED: u16 = 4;

/// One question the server received: the name in lower case, without the final dot, and the
/// record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub record_type: u16,
}

#[derive(Default)]
struct Zone {
    /// Addresses by name. Successive A queries for a name get them in turn.
    answers: HashMap<String, Vec<Ipv4Addr>>,
    questions: Vec<Question>,
}

impl Zone {
    /// Returns the address for the next A query of `name`, after recording the question.
    fn answer(&mut self, question: &Question) -> Option<Ipv4Addr> {
        let previous = self
            .questions
            .iter()
            .filter(|asked| asked == &question)
            .count();
        self.questions.push(question.clone());
        let addresses = self.answers.get(&question.name)?;
        Some(addresses[previous % addresses.len()])
    }
}

/// The running server, which stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestDns {
    /// Starts a server on 127.0.0.1 with a port chosen by the kernel and no names.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a UDP socket on 127.0.0.1:0");
        let addr = socket.local_addr().expect("a bound socket has an address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let task = tokio::spawn(serve(socket, zone.clone()));
        Self { addr, zone, task }
    }

    /// Makes the server answer A queries for `name` with `ip` from now on.
    pub fn set(&self, name: &str, ip: Ipv4Addr) {
        self.alternate(name, &[ip]);
    }

    /// Makes the server answer A queries for `name` with each of `ips` in turn, one per
    /// query, from now on.
    pub fn alternate(&self, name: &str, ips: &[Ipv4Addr]) {
        assert!(!ips.is_empty(), "a name needs at least one address");
        self.zone
            .lock()
            .expect("lock the zone")
            .answers
            .insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// Returns how many A queries for `name` the server has received.
    pub fn a_queries(&self, name: &str) -> usize {
        let name = name.to_ascii_lowercase();
        self.zone
            .lock()
            .expect("lock the zone")
            .questions
            .iter()
            .filter(|question| question.name == name && question.record_type == TYPE_A)
            .count()
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buffer = [0_u8; 1500];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(response) = respond(&buffer[..len], &zone) else {
            continue;
        };
        // UDP may lose a reply, and the client then sends its query again.
        let _ = socket.send_to(&response, peer).await;
    }
}

/// Builds the response to one query, or `None` for a packet that is not a query at all.
fn respond(query: &[u8], zone: &Mutex<Zone>) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & FLAG_RESPONSE != 0 {
        return None;
    }
    let reply_flags = FLAG_RESPONSE
        | FLAG_AUTHORITATIVE
        | FLAG_RECURSION_AVAILABLE
        | (flags & FLAG_RECURSION_DESIRED);

    let question_count = u16::from_be_bytes([query[4], query[5]]);
    if flags & OPCODE_MASK != 0 {
        return Some(header_only(query, reply_flags | RCODE_NOT_IMPLEMENTED));
    }
    let parsed = (question_count == 1)
        .then(|| parse_question(query))
        .flatten();
    let Some((question, question_end)) = parsed else {
        return Some(header_only(query, reply_flags | RCODE_FORMAT_ERROR));
    };

    let answer = zone.lock().expect("lock the zone").answer(&question);
    let (rcode, answer) = match answer {
        None => (RCODE_NAME_ERROR, None),
        Some(ip) if question.record_type == TYPE_A => (0, Some(ip)),
        Some(_) => (0, None),
    };

    let mut response = Vec::with_capacity(question_end + 16);
    response.extend_from_slice(&query[..2]);
    response.extend_from_slice(&(reply_flags | rcode).to_be_bytes());
    response.extend_from_slice(&1_u16.to_be_bytes());
    response.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    response.extend_from_slice(&[0, 0, 0, 0]);
    response.extend_from_slice(&query[HEADER_LEN..question_end]);
    if let Some(ip) = answer {
        // The owner name is a pointer (0xC000 | offset) to the name in the question.
        response.extend_from_slice(&(0xC000_u16 | HEADER_LEN as u16).to_be_bytes());
        response.extend_from_slice(&TYPE_A.to_be_bytes());
        response.extend_from_slice(&CLASS_IN.to_be_bytes());
        response.extend_from_slice(&0_u32.to_be_bytes());
        response.extend_from_slice(&4_u16.to_be_bytes());
        response.extend_from_slice(&ip.octets());
    }
    Some(response)
}

/// Parses the one question after the header. Returns it with the offset where it ends.
fn parse_question(query: &[u8]) -> Option<(Question, usize)> {
    let mut labels = Vec::new();
    let mut offset = HEADER_LEN;
    loop {
        let len = usize::from(*query.get(offset)?);
        offset += 1;
        if len == 0 {
            break;
        }
        // Queries carry no compression pointers, and a label is at most 63 bytes.
        if len > 63 {
            return None;
        }
        let label = query.get(offset..offset + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        offset += len;
    }
    let fixed = query.get(offset..offset + 4)?;
    let record_type = u16::from_be_bytes([fixed[0], fixed[1]]);
    let question = Question {
        name: labels.join("."),
        record_type,
    };
    Some((question, offset + 4))
}

/// Builds a response with no sections, for a query the server cannot answer.
fn header_only(query: &[u8], flags: u16) -> Vec<u8> {
    let mut response = Vec::with_capacity(HEADER_LEN);
    response.extend_from_slice(&query[..2]);
    response.extend_from_slice(&flags.to_be_bytes());
    response.extend_from_slice(&[0; 8]);
    response
}
