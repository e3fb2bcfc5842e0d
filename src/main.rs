//! The `capra` binary: parse, run, and turn the outcome into an exit status
//! (0 success, 1 error, 2 bad usage).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(capra::cli::main_with_args(std::env::args_os().collect()))
}
