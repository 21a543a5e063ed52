//! The `herald` command: parses arguments and calls into the libraries.

mod bench;
mod campaign;
mod chat;
mod cli;
mod demo;

/// mimalloc rather than the C library's allocator: a server's threads
/// allocate and free small objects all the time, and glibc's arenas spent
/// about a tenth of the server's CPU on it under load (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
