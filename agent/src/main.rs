//! `xmagent`: all logic lives in the library; this only hands the exit code to the OS.

/// jemalloc instead of glibc malloc: the request path allocates many short-lived buffers of
/// mixed sizes across threads, where glibc spent a fifth of the agent's CPU (measured with
/// `xmbench`). Its options are built in (`.cargo/config.toml`) so a plain `xmagent run` has them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    std::process::exit(agent::cli::main());
}
