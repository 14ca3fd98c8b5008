//! A minimal HTTP/1.1 upstream for the Envoy half of `scripts/bench-auth.sh`:
//! answers every request with `200 ok`, keeping connections alive, so that
//! Envoy (and keyward, as its ext_authz) dominate the measured time.
//!
//! ```text
//! rustc --edition 2021 -C opt-level=3 -o target/release/examples/bench_upstream examples/bench_upstream.rs
//! target/release/examples/bench_upstream 127.0.0.1:8080
//! ```
//!
//! (The script compiles it with `rustc` directly: `cargo build --example`
//! would also build the root package's dev-dependencies.)
//!
//! Standard library only, one thread per connection (Envoy opens a handful).
//! A benchmark tool: not part of the keyward binary.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("bench_upstream listening on {}", listener.local_addr()?);
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            // A connection ends with an error or EOF either way.
            let _ = serve(stream);
        });
    }
    Ok(())
}

/// Answers each request of one keep-alive connection (no pipelining needed).
fn serve(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Request line and headers, up to the blank line.
        let mut content_length = 0u64;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let text = line.trim_end();
            if text.is_empty() {
                if first {
                    continue; // Tolerate a stray CRLF between requests.
                }
                break;
            }
            if !first {
                if let Some((name, value)) = text.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        content_length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            first = false;
        }
        // Discard a body, if any (the benchmark sends GETs).
        io::copy(&mut (&mut reader).take(content_length), &mut io::sink())?;
        writer.write_all(REPLY)?;
    }
}
