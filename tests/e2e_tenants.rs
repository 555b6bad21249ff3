//! End to end: the `tenants` example served on a loopback port, under load from 64
//! keep-alive connections, each for its own tenant. Every answer must carry its own tenant
//! in all fields (read after awaits, in a spawned task, in a blocking task): one request's
//! context never reaches another's, whatever worker thread serves it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[allow(
    dead_code,
    reason = "the example's `main` and background job are not used here"
)]
#[path = "../examples/tenants.rs"]
mod tenants;

const CONNECTIONS: usize = 64;
const REQUESTS_PER_CONNECTION: usize = 80; // 5,120 in all
/// A guard against a hang, not a performance claim.
const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 60);

/// One HTTP/1.1 response: status and body.
struct Answer {
    status: u16,
    body: String,
}

/// A minimal HTTP/1.1 keep-alive client: enough for `GET` and a `Content-Length` body.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the loopback server");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream: BufReader::new(stream),
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        for (name, value) in headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send");

        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status line");
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = None;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("header line");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>().expect("content-length"));
            }
        }
        let mut body = vec![0; length.expect("the service sends content-length")];
        self.stream.read_exact(&mut body).await.expect("body");
        Answer {
            status,
            body: String::from_utf8(body).expect("utf-8 body"),
        }
    }
}

async fn serve() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    // Runs until the test's runtime shuts down.
    tokio::spawn(async move { axum::serve(listener, tenants::app()).await });
    addr
}

fn field<'a>(json: &'a serde_json::Value, name: &str) -> &'a str {
    json[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{name}` in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_carries_its_own_tenant_under_load() {
    let addr = serve().await;
    let started = Instant::now();
    let connections = (0..CONNECTIONS).map(|c| {
        tokio::spawn(async move {
            let tenant = format!("tenant-{c}");
            let mut client = Client::connect(addr).await;
            let mut request_ids = Vec::with_capacity(REQUESTS_PER_CONNECTION);
            for r in 0..REQUESTS_PER_CONNECTION {
                // Half the requests bring their own id; the others get a generated one.
                let own_id = format!("{tenant}-{r}");
                let mut headers = vec![("x-tenant-id", tenant.as_str())];
                if r % 2 == 0 {
                    headers.push(("x-request-id", own_id.as_str()));
                }
                let answer = client.get("/whoami", &headers).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
                let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
                for name in ["tenant", "spawned", "blocking"] {
                    assert_eq!(field(&json, name), tenant, "`{name}` in {json}");
                }
                let request_id = field(&json, "request_id").to_string();
                if r % 2 == 0 {
                    assert_eq!(request_id, own_id);
                } else {
                    assert!(request_id.starts_with("req-"), "{request_id}");
                }
                request_ids.push(request_id);
            }
            request_ids
        })
    });
    let all = tokio::time::timeout(GIVE_UP_AFTER, async {
        let mut all = Vec::new();
        for connection in connections.collect::<Vec<_>>() {
            all.extend(connection.await.expect("a connection's assertions failed"));
        }
        all
    })
    .await
    .expect("the load test did not finish in time");
    let elapsed = started.elapsed();

    let total = CONNECTIONS * REQUESTS_PER_CONNECTION;
    assert_eq!(all.len(), total);
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(
        distinct.len(),
        total,
        "every request had its own request id"
    );
    println!(
        "e2e_tenants: {total} requests over {CONNECTIONS} connections in {:.2} s: {:.0} requests/s",
        elapsed.as_secs_f64(),
        f64::from(u32::try_from(total).expect("a few thousand")) / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_tenant_header_is_a_json_400() {
    let addr = serve().await;
    let mut client = Client::connect(addr).await;
    for headers in [
        &[][..],
        &[("x-tenant-id", "")][..],
        &[("x-tenant-id", "not a tenant!")][..],
    ] {
        let answer = client.get("/whoami", headers).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
        assert!(field(&json, "error").contains("x-tenant-id"), "{json}");
    }
    // The connection is still good, and a tenant from before does not linger.
    let answer = client.get("/whoami", &[("x-tenant-id", "acme")]).await;
    assert_eq!(answer.status, 200);
    let answer = client.get("/whoami", &[]).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
}
