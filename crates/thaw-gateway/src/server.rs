//! `thaw up`: open the platform, serve HTTP until stopped, shut down.

use crate::platform::{Config, Platform};
use anyhow::Context as _;
use std::net::SocketAddr;

/// Runs the platform until the process is stopped.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let platform = Platform::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen} (is another thaw running? pick another with --listen)"))?;
    let addr = listener.local_addr()?;
    platform.spawn_reaper();
    eprintln!("{}", platform.started_line(addr));
    if !platform.can_build_typescript() {
        eprintln!("warning: esbuild not found: TypeScript deploys will fail until `cargo xtask setup` runs");
    }
    let app = crate::api::router(platform.clone());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("thaw is stopping");
    })
    .await?;
    platform.shut_down().await;
    Ok(())
}
