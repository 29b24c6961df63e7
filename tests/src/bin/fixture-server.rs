//! The test fixture as a process, for tests that run the upstream inside a network namespace.
//! Usage: `fixture-server 127.0.0.1:3000`; prints `listening on ADDR` once ready.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string())
        .parse()
        .map_err(|err| anyhow::anyhow!("invalid listen address: {err}"))?;
    let fixture = tunnel_tests::Fixture::start_on(addr).await?;
    println!("listening on {}", fixture.addr);
    std::future::pending::<()>().await;
    Ok(())
}
