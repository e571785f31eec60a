//! A loopback HTTP/1.1 server for tests: one request per connection (`Connection: close`), each
//! answered on its own thread by a handler the test writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The request target, query included.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response: status code, headers (Content-Length and Connection are added), body. To a
/// `HEAD` request the body is not sent, its length is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A JSON body.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response::new(status, body.to_string()).header("Content-Type", "application/json")
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// A listening socket on a free port of 127.0.0.1, not yet answering.
pub struct Server {
    listener: TcpListener,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Server {
    pub fn bind() -> std::io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        Ok(Server { listener, url })
    }

    /// Answers with `handler` from a background thread, for at most `max_connections`.
    pub fn serve<F>(self, max_connections: usize, handler: F)
    where
        F: Fn(Request) -> Response + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in self.listener.incoming().take(max_connections).flatten() {
                let handler = handler.clone();
                // A failed exchange concerns that client only; keep serving.
                std::thread::spawn(move || exchange(stream, &*handler));
            }
        });
    }
}

/// Serves `handler` on a free port for at most `max_connections`; returns its URL.
pub fn serve<F>(max_connections: usize, handler: F) -> std::io::Result<String>
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    let server = Server::bind()?;
    let url = server.url.clone();
    server.serve(max_connections, handler);
    Ok(url)
}

fn exchange(mut stream: TcpStream, handler: &dyn Fn(Request) -> Response) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    // A test server: bodies up to 1 GiB.
    let mut body = vec![0u8; length.min(1 << 30)];
    reader.read_exact(&mut body)?;
    let mut parts = line.split_whitespace();
    let request = Request {
        method: parts.next().unwrap_or_default().to_string(),
        path: parts.next().unwrap_or_default().to_string(),
        headers,
        body,
    };
    let head_only = request.method == "HEAD";
    let response = handler(request);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn send(url: &str, raw: &str) -> String {
        let mut s = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn the_handler_sees_the_request_and_head_gets_no_body() {
        let url = serve(2, |r: Request| {
            let text = format!(
                "{} {} {:?} {}",
                r.method,
                r.path,
                r.header("X-Key"),
                r.body.len()
            );
            Response::new(200, text).header("ETag", "\"e\"")
        })
        .unwrap();
        let got = send(
            &url,
            "POST /a?b HTTP/1.1\r\nx-key: v\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\nETag: \"e\"\r\n"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\nPOST /a?b Some(\"v\") 3"), "{got}");
        let got = send(&url, "HEAD /x HTTP/1.1\r\n\r\n");
        assert!(
            got.contains("Content-Length: 14\r\n") && got.ends_with("\r\n\r\n"),
            "{got}"
        );
    }
}
