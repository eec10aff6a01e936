//! The floor: the least a server can do to deliver SSE, as a reference measured in the same
//! run as Herald. One thread, one epoll loop (mio), no store, no queues: a publish is framed
//! once, with Herald's wire bytes, and written straight to every subscriber's socket; only
//! what the kernel does not take is buffered. It speaks the subset of Herald's API the bench
//! uses (`GET /v1/sse?channel=…` with one channel, `POST /v1/publish`, `POST
//! /v1/publish/batch`, `GET /healthz`), so `herald bench --addr` aims at it unchanged.

use anyhow::Context;
use herald_proto::{PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResult};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX);
/// Largest request head or body taken.
const MAX_REQUEST: usize = 1 << 20;
/// A subscriber with this much unwritten is dropped (the floor has no slow-consumer policy
/// beyond this bound).
const MAX_PENDING: usize = 4 << 20;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// Bytes the kernel has not taken yet.
    output: Vec<u8>,
    /// A stream: the channel it follows.
    channel: Option<String>,
    writable_armed: bool,
    /// Close once `output` is written (a response without keep-alive).
    close_when_flushed: bool,
}

struct Channel {
    epoch: u64,
    seq: u64,
    subs: Vec<usize>,
}

/// Serves until the process ends. Prints `herald floor listening on http://ADDR` once bound.
pub fn run(addr: SocketAddr) -> anyhow::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!(
        "herald floor listening on http://{}",
        listener.local_addr()?
    );
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let t = next;
                            next += 1;
                            poll.registry()
                                .register(&mut stream, Token(t), Interest::READABLE)?;
                            conns.insert(
                                t,
                                Conn {
                                    stream,
                                    input: Vec::new(),
                                    output: Vec::new(),
                                    channel: None,
                                    writable_armed: false,
                                    close_when_flushed: false,
                                },
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let t = ev.token().0;
            let mut close = false;
            if ev.is_writable() {
                if let Some(c) = conns.get_mut(&t) {
                    close |= flush(c).is_err() || (c.close_when_flushed && c.output.is_empty());
                }
            }
            if ev.is_readable() && !close {
                close |= read_and_serve(t, &mut conns, &mut channels, &poll);
            }
            if close {
                drop_conn(t, &mut conns, &mut channels, &poll);
            } else if let Some(c) = conns.get_mut(&t) {
                arm(c, t, &poll)?;
            }
        }
    }
}

/// Reads what arrived and answers every complete request; true when the connection ends.
fn read_and_serve(
    t: usize,
    conns: &mut HashMap<usize, Conn>,
    channels: &mut HashMap<String, Channel>,
    poll: &Poll,
) -> bool {
    let Some(c) = conns.get_mut(&t) else {
        return true;
    };
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                if c.channel.is_some() {
                    continue; // a stream's client has nothing more to say
                }
                c.input.extend_from_slice(&buf[..n]);
                if c.input.len() > MAX_REQUEST {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    loop {
        let Some(c) = conns.get_mut(&t) else {
            return true;
        };
        let Some(req) = take_request(&mut c.input) else {
            break;
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/sse") => {
                let Some(channel) = query_channel(&req.query) else {
                    return respond(
                        conns,
                        t,
                        400,
                        r#"{"error":{"code":"missing_channel","message":"one ?channel="}}"#,
                        false,
                    );
                };
                let Some(c) = conns.get_mut(&t) else {
                    return true;
                };
                c.output.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\nretry: 1000\n\n",
                );
                c.channel = Some(channel.clone());
                channels
                    .entry(channel)
                    .or_insert_with(new_channel)
                    .subs
                    .push(t);
                return flush(c).is_err();
            }
            ("POST", path @ ("/v1/publish" | "/v1/publish/batch")) => {
                let (status, body) = match publish_body(
                    &req.body,
                    path.ends_with("/batch"),
                    conns,
                    channels,
                    poll,
                ) {
                    Some(body) => (200, body),
                    None => (
                        400,
                        r#"{"error":{"code":"invalid_json","message":"bad body"}}"#.to_owned(),
                    ),
                };
                if respond(conns, t, status, &body, req.keep_alive) {
                    return true;
                }
            }
            ("GET", "/healthz") | ("GET", "/readyz") => {
                if respond(conns, t, 200, r#"{"ok":true}"#, req.keep_alive) {
                    return true;
                }
            }
            _ => {
                return respond(
                    conns,
                    t,
                    404,
                    r#"{"error":{"code":"not_found","message":"the floor serves /v1/sse and /v1/publish"}}"#,
                    false,
                )
            }
        }
    }
    false
}

fn new_channel() -> Channel {
    Channel {
        epoch: now_ms().max(1),
        seq: 0,
        subs: Vec::new(),
    }
}

/// Publishes a single (`batch` false) or batch request body; the response body, or `None`
/// when the body does not parse.
fn publish_body(
    body: &[u8],
    batch: bool,
    conns: &mut HashMap<usize, Conn>,
    channels: &mut HashMap<String, Channel>,
    poll: &Poll,
) -> Option<String> {
    if batch {
        let b: PublishBatchRequest = serde_json::from_slice(body).ok()?;
        let results = b
            .messages
            .into_iter()
            .map(|p| publish(p, conns, channels, poll))
            .collect();
        serde_json::to_string(&PublishBatchResponse { results }).ok()
    } else {
        let p: PublishRequest = serde_json::from_slice(body).ok()?;
        serde_json::to_string(&publish(p, conns, channels, poll)).ok()
    }
}

/// Frames the message once and writes it to every subscriber of its channel.
fn publish(
    p: PublishRequest,
    conns: &mut HashMap<usize, Conn>,
    channels: &mut HashMap<String, Channel>,
    poll: &Poll,
) -> PublishResult {
    let ch = channels
        .entry(p.channel.clone())
        .or_insert_with(new_channel);
    ch.seq += 1;
    let data = p.data.as_ref().map_or("", |d| d.get());
    let data = herald_proto::one_line_json(data);
    let mut envelope = Vec::with_capacity(data.len() + p.channel.len() + 64);
    herald_proto::write_envelope(
        &mut envelope,
        &p.channel,
        Some(ch.epoch),
        Some(ch.seq),
        now_ms(),
        data.as_bytes(),
    );
    let mut id = Vec::with_capacity(48);
    herald_proto::encode_cursor_into(
        &[(
            herald_proto::channel_hash(&p.channel),
            herald_proto::Position {
                epoch: ch.epoch,
                seq: ch.seq,
            },
        )],
        &mut id,
    );
    let mut frame = Vec::with_capacity(envelope.len() + id.len() + 32);
    herald_proto::write_event(
        &mut frame,
        Some(&id),
        Some(p.event.as_deref().unwrap_or("message")),
        &envelope,
    );
    let mut gone = Vec::new();
    for &s in &ch.subs {
        let Some(c) = conns.get_mut(&s) else {
            continue;
        };
        let ok = if c.output.is_empty() {
            write_direct(c, &frame)
        } else {
            c.output.extend_from_slice(&frame);
            c.output.len() <= MAX_PENDING
        };
        if !ok || arm(c, s, poll).is_err() {
            gone.push(s);
        }
    }
    let result = PublishResult {
        channel: p.channel,
        epoch: Some(ch.epoch),
        seq: Some(ch.seq),
        ..PublishResult::default()
    };
    for s in gone {
        drop_conn(s, conns, channels, poll);
    }
    result
}

/// Writes `frame` now; keeps what the kernel does not take. False when the peer is gone.
fn write_direct(c: &mut Conn, frame: &[u8]) -> bool {
    let mut done = 0;
    while done < frame.len() {
        match c.stream.write(&frame[done..]) {
            Ok(0) => return false,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    c.output.extend_from_slice(&frame[done..]);
    true
}

fn flush(c: &mut Conn) -> io::Result<()> {
    let mut done = 0;
    while done < c.output.len() {
        match c.stream.write(&c.output[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    c.output.drain(..done);
    Ok(())
}

/// Asks for writability only while output waits.
fn arm(c: &mut Conn, t: usize, poll: &Poll) -> io::Result<()> {
    let want = !c.output.is_empty();
    if want != c.writable_armed {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut c.stream, Token(t), interest)?;
        c.writable_armed = want;
    }
    Ok(())
}

/// Queues a response; true when the connection ends (after it, or because it failed).
fn respond(
    conns: &mut HashMap<usize, Conn>,
    t: usize,
    status: u16,
    body: &str,
    keep_alive: bool,
) -> bool {
    let Some(c) = conns.get_mut(&t) else {
        return true;
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if keep_alive { "" } else { "connection: close\r\n" }
    );
    c.output.extend_from_slice(head.as_bytes());
    c.output.extend_from_slice(body.as_bytes());
    c.close_when_flushed |= !keep_alive;
    flush(c).is_err() || (c.close_when_flushed && c.output.is_empty())
}

fn drop_conn(
    t: usize,
    conns: &mut HashMap<usize, Conn>,
    channels: &mut HashMap<String, Channel>,
    poll: &Poll,
) {
    if let Some(mut c) = conns.remove(&t) {
        let _ = poll.registry().deregister(&mut c.stream);
        if let Some(ch) = c.channel.and_then(|name| channels.get_mut(&name)) {
            ch.subs.retain(|&s| s != t);
        }
    }
}

/// One parsed request.
struct Req {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
    keep_alive: bool,
}

/// Takes the first complete request (head and body) off `input`, if there is one.
fn take_request(input: &mut Vec<u8>) -> Option<Req> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let mut body_len = 0usize;
    let mut keep_alive = r.version == Some(1);
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if input.len() < head_len + body_len {
        return None;
    }
    let target = r.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = Req {
        method: r.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        body: input[head_len..head_len + body_len].to_vec(),
        keep_alive,
    };
    input.drain(..head_len + body_len);
    Some(req)
}

fn query_channel(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "channel")
        .map(|(_, v)| v.into_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_whole_and_in_order() {
        let mut input = b"POST /v1/publish HTTP/1.1\r\ncontent-length: 5\r\n\r\n{\"a\"".to_vec();
        assert!(take_request(&mut input).is_none(), "body incomplete");
        input.extend_from_slice(
            b"}GET /v1/sse?channel=live%3A1 HTTP/1.1\r\nconnection: close\r\n\r\n",
        );
        let first = take_request(&mut input).expect("first");
        assert_eq!(
            (first.method.as_str(), first.path.as_str()),
            ("POST", "/v1/publish")
        );
        assert_eq!(first.body, b"{\"a\"}");
        assert!(first.keep_alive);
        let second = take_request(&mut input).expect("second");
        assert_eq!(query_channel(&second.query).as_deref(), Some("live:1"));
        assert!(!second.keep_alive);
        assert!(input.is_empty());
    }
}
