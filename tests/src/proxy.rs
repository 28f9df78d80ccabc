//! A tampering HTTP proxy for JSON-RPC: forwards each request to a node
//! and hands the JSON answer to a function that may change it (flip a byte
//! of a proof, a digit of a balance) before it goes back to the client.
//!
//! One request per connection (`Connection: close` both ways), which every
//! HTTP client handles; the thread stops when the proxy is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Changes one JSON-RPC answer; returns whether it changed anything.
pub type Tamper = Box<dyn FnMut(&mut serde_json::Value) -> bool + Send>;

/// A running proxy.
pub struct TamperProxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    tampered: Arc<AtomicUsize>,
    tamper: Arc<Mutex<Tamper>>,
}

impl TamperProxy {
    /// A proxy in front of `upstream_port` applying `tamper` to every
    /// answer.
    pub fn start(upstream_port: u16, tamper: Tamper) -> TamperProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let tampered = Arc::new(AtomicUsize::new(0));
        let tamper = Arc::new(Mutex::new(tamper));
        let (s, t, f) = (stop.clone(), tampered.clone(), tamper.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if serve(conn, upstream_port, &f) {
                            t.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TamperProxy {
            port,
            stop,
            tampered,
            tamper,
        }
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers changed so far.
    pub fn tampered(&self) -> usize {
        self.tampered.load(Ordering::Acquire)
    }

    /// Replaces the tampering function.
    pub fn set(&self, tamper: Tamper) {
        *self.tamper.lock().expect("tamper lock") = tamper;
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Reads one HTTP message (headers, then a `Content-Length` body or, with
/// none, everything up to the end of the stream).
fn read_message(stream: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut r = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        None => {
            r.read_to_end(&mut body).ok()?;
        }
    }
    Some((head, body))
}

/// Serves one connection; returns whether the answer was changed.
fn serve(mut conn: TcpStream, upstream: u16, tamper: &Mutex<Tamper>) -> bool {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((_, body)) = read_message(&mut conn) else {
        return false;
    };
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return false;
    };
    let _ = up.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = write!(
        up,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = up.write_all(&body);
    let Some((head, answer)) = read_message(&mut up) else {
        return false;
    };
    let status = head.split_whitespace().nth(1).unwrap_or("502").to_string();
    let mut changed = false;
    let out = match serde_json::from_slice::<serde_json::Value>(&answer) {
        Ok(mut v) => {
            if let Some(result) = v.get_mut("result") {
                changed = (tamper.lock().expect("tamper lock"))(result);
            }
            serde_json::to_vec(&v).unwrap_or(answer)
        }
        Err(_) => answer,
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    );
    let _ = conn.write_all(&out);
    changed
}

/// Flips bit `bit` of byte `i` (wrapping) of the hex string at `key` of a
/// JSON object; returns whether the key held a hex string.
pub fn flip_hex_byte(v: &mut serde_json::Value, key: &str, i: usize, bit: u8) -> bool {
    let Some(s) = v.get(key).and_then(|s| s.as_str()) else {
        return false;
    };
    let Ok(mut bytes) = hex::decode(s) else {
        return false;
    };
    if bytes.is_empty() {
        return false;
    }
    let n = bytes.len();
    bytes[i % n] ^= 1 << (bit % 8);
    v[key] = serde_json::Value::String(hex::encode(bytes));
    true
}
