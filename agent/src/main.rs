//! The `loco-agent` binary: parses the command line, sets up logging and the async runtime,
//! and runs the agent ([`loco_agent::run`]). Everything else lives in the library
//! (`src/lib.rs`), so that tests and the fuzz targets drive the same code.

use loco_agent::Args;

fn main() {
    loco_agent::tune_malloc();
    let args: Args = loco_agent::parse_args_or_exit("loco-agent");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LOCO_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,webrtc=warn,webrtc_ice=warn,webrtc_dtls=warn,webrtc_sctp=warn,vnc=warn",
            )
        }))
        .with_writer(std::io::stderr)
        .init();
    // One thread for every async task (the VNC connection, WebRTC, HTTP): the heavy work runs
    // on threads of its own (one encoder thread per codec, one audio thread). A second worker
    // cost a fifth of the rest of the agent's CPU in cross-thread wake-ups (benchmark/README.md,
    // "The agent's async runtime on one thread").
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loco-agent: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(loco_agent::run(args)) {
        eprintln!("loco-agent: {e:#}");
        std::process::exit(1);
    }
}
