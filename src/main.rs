//! `hive`: parse the command line and hand off. Everything else lives in `cli` and the libraries.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
