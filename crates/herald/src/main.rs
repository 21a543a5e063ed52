//! The `herald` command: parses arguments and calls into the libraries.

mod bench;
mod chat;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
