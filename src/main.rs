//! The `ferry` binary. All of it lives in `crates/cli`; this root package exists so that
//! `cargo run --release -- dev` works from the repository root and so that `tests/` and
//! `benches/` share one build of the binary.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ferry_cli::main()
}
