//! Command-line entry point of `flowlog-agent`.

use clap::Parser;

/// flowlog host agent: captures packets on this host's interfaces and writes VPC flow log
/// records.
///
/// This release only prints its version and this help: packet capture, flow aggregation and
/// delivery to the aggregator are not built yet. Use `flowlog-aggregator convert` to work
/// with existing flow log files.
#[derive(Debug, Parser)]
#[command(name = "flowlog-agent", version, about, long_about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "flowlog-agent {}: capture is not built yet; see --help",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(64);
}
