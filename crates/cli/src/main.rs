//! The `dssm` command. All logic lives in the `dssm_cli` library; this file sets the allocator, logging and
//! the exit code.

use std::process::ExitCode;

// Candle allocates every intermediate tensor; mimalloc measured ~1.8x faster training than the system
// allocator on the project's machines (see FACTS in the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    dssm_cli::init_logging();
    match dssm_cli::run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
